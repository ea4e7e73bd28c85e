//! A stored global model as one JSON document: what `consortia model export` writes and
//! the console's Training page offers for download.
//!
//! The document carries everything scoring needs and nothing about any partner's rows:
//! the task it was trained under (canonical TOML and hash), the round, the model's kind,
//! feature names and flat parameters, the parameters by name, and the federation-wide
//! standardisation.

use consortia_model::TaskSpec;

use crate::CoordinatorError;
use crate::store::Store;

/// The export of the global model of `round`; `None` when no model is stored for it.
pub fn model_export(
    store: &Store,
    round: u64,
) -> Result<Option<serde_json::Value>, CoordinatorError> {
    let Some(params) = store.model(round)? else {
        return Ok(None);
    };
    let task_err = |e: &dyn std::fmt::Display| CoordinatorError::Task(e.to_string());
    let task_text = store
        .task_toml()?
        .ok_or_else(|| CoordinatorError::Task("the state directory holds no task".into()))?;
    let task = TaskSpec::from_toml_str(&task_text).map_err(|e| task_err(&e))?;
    let model = consortia_model::model_with_params(&task, &params).map_err(|e| task_err(&e))?;
    let mut doc = serde_json::json!({
        "task": task.name,
        "task_toml": task.to_toml_string().map_err(|e| task_err(&e))?,
        "task_hash": hex::encode(task.canonical_hash().map_err(|e| task_err(&e))?),
        "round": round,
        "kind": model.kind(),
        "features": task.schema.feature_names(),
        "parameters": model.params(),
    });
    let standardization = serde_json::to_value(store.standardizer()?).map_err(|e| task_err(&e))?;
    if let Some(obj) = doc.as_object_mut() {
        obj.extend(model.export());
        obj.insert("standardization".into(), standardization);
    }
    Ok(Some(doc))
}
