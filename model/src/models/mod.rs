//! The model families, one file each behind [`crate::Model`]: [`logistic`]
//! regression and the [`mlp`] classifier, the [`glm`] for numeric targets and the [`mf`]
//! matrix factorisation for recommendation. Only
//! [`crate::model::build`] names them; every other crate holds a `Box<dyn Model>`.

pub mod glm;
mod linear;
pub mod logistic;
pub mod mf;
pub mod mlp;
