//! The ONNX file `consortia model export` writes beside its JSON: the same model,
//! read back from the JSON just written (so it is exactly what `consortia score`
//! would apply), as a graph any ONNX runtime can run (see
//! [`consortia_model::onnx`] for the graph and its input).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use consortia_model::onnx::{OnnxError, check_supported, to_onnx};
use consortia_model::standardize::Standardizer;

/// Where the ONNX file of the JSON export `json` goes: the same path with the
/// extension `.onnx` (`model.json` → `model.onnx`).
pub(crate) fn onnx_path(json: &Path) -> Result<PathBuf> {
    if json
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        bail!(
            "--out {} ends in .onnx, where the ONNX file beside the JSON would go; \
             name the JSON export e.g. model.json",
            json.display()
        );
    }
    Ok(json.with_extension("onnx"))
}

/// Writes the ONNX file of the exported model `json` beside it and returns its
/// path; `Ok(None)`, after saying why on standard error, when the model's kind has
/// no ONNX graph or the model has no standardisation yet (the JSON export stands
/// on its own).
pub(crate) fn write_beside(json: &Path) -> Result<Option<PathBuf>> {
    let path = onnx_path(json)?;
    let (file, task) = crate::score::read_model_file(json)?;
    if let Err(e) = check_supported(task.model.kind) {
        eprintln!("no ONNX file written: {e}");
        return Ok(None);
    }
    let Some(st) = file.standardization.as_ref() else {
        eprintln!(
            "no ONNX file written: the model of round {} has no standardisation (its round \
             ran before the federation agreed one)",
            file.round
        );
        return Ok(None);
    };
    let standardizer = Standardizer::from_parts(st.mean.clone(), st.std.clone())
        .with_context(|| format!("the standardisation in {}", json.display()))?;
    let metadata = [
        ("task".to_owned(), file.task.clone()),
        ("task_hash".to_owned(), file.task_hash.clone()),
        ("round".to_owned(), file.round.to_string()),
    ];
    let bytes = match to_onnx(&task, &file.parameters, &standardizer, &metadata) {
        Ok(bytes) => bytes,
        Err(e @ OnnxError::Unsupported { .. }) => {
            eprintln!("no ONNX file written: {e}");
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot write {} as ONNX", json.display()));
        }
    };
    // Written beside and renamed into place: a failure leaves no half file.
    let partial = path.with_extension("onnx.partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&partial)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&partial, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(Some(path))
}
