//! consortia-privacy: the privacy mathematics of the federation.
//!
//! `dp` holds the differential-privacy mechanisms and the accountant; `he`
//! holds the multiparty additive homomorphic encryption on tfhe's
//! `core_crypto`; `update` maps model updates to the integers that are
//! encrypted and back. Pure computation: no network, no storage, no crate of
//! ours.

pub mod dp;
pub mod he;
pub mod update;
