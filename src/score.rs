//! `consortia model export` and `consortia score`: a stored global model leaves the
//! coordinator as one JSON file, and a partner applies it to its own customers' CSV
//! where the data lives.
//!
//! The export carries everything scoring needs and nothing about any partner's rows:
//! the task file it was trained under (and its canonical hash), the round, the model's
//! flat parameters, the federation-wide standardisation (means and standard deviations
//! agreed from the partners' — under `[privacy]`, noised — statistics), and the model's
//! parameters by name for people to read.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use consortia_model::TaskSpec;
use consortia_model::standardize::Standardizer;
use serde::{Deserialize, Serialize};

/// Exported model files larger than this are refused before they are parsed.
pub(crate) const MAX_EXPORT_BYTES: u64 = 1 << 30;

/// The fields of an exported model that scoring reads.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModelFile {
    /// Task name.
    pub task: String,
    /// The task file, canonical form (`TaskSpec::to_toml_string`).
    pub task_toml: String,
    /// Hex SHA-256 canonical hash of the task (`TaskSpec::canonical_hash`).
    pub task_hash: String,
    /// The round whose model this is.
    pub round: u64,
    /// The model's shared parameters in its wire layout.
    pub parameters: Vec<f64>,
    /// The federation's standardisation.
    pub standardization: Option<Standardization>,
}

/// Per-feature means and standard deviations.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Standardization {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations.
    pub std: Vec<f64>,
}

/// Writes the global model of `round` (the last completed one by default) from the
/// coordinator's state directory to `out`.
pub(crate) fn export(state: &Path, round: Option<u64>, out: &Path) -> Result<()> {
    crate::onnx_export::onnx_path(out)?;
    let store = crate::open_state_read_only(state)?;
    let round = match round {
        Some(r) => r,
        None => store.last_round()?,
    };
    // The same document the web console offers for download.
    let doc = consortia_coordinator::console::model_export(&store, round)?
        .with_context(|| format!("no model stored for round {round}"))?;
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("model of round {round} written to {}", out.display());
    if let Some(onnx) = crate::onnx_export::write_beside(out)? {
        println!("ONNX model written to {}", onnx.display());
    }
    Ok(())
}

/// Reads an exported model, checking its size first, that its task parses and hashes
/// to the hash it states, and that its parameters fit the task's model.
pub(crate) fn read_model_file(path: &Path) -> Result<(ModelFile, TaskSpec)> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?
        .len();
    if len > MAX_EXPORT_BYTES {
        bail!(
            "model file {} is {len} bytes, more than the {MAX_EXPORT_BYTES} an exported model may have",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let file: ModelFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a model exported by `consortia model export` (re-export it with this version)",
            path.display()
        )
    })?;
    let task = TaskSpec::from_toml_str(&file.task_toml)
        .with_context(|| format!("the task inside {}", path.display()))?;
    let hash = hex::encode(task.canonical_hash()?);
    if hash != file.task_hash || task.name != file.task {
        bail!(
            "{}: the task inside does not match the task it states ({} {}), so the file was edited or damaged",
            path.display(),
            file.task,
            file.task_hash
        );
    }
    Ok((file, task))
}

/// Scores the rows of `data` with the model in `model_path` and writes `id,score`
/// lines to `out`. With `expected_task`, a model of any other task is refused.
pub(crate) fn score(
    model_path: &Path,
    data: &Path,
    out: &Path,
    id_column: Option<&str>,
    expected_task: Option<&Path>,
) -> Result<()> {
    let (file, task) = read_model_file(model_path)?;
    if let Some(expected) = expected_task {
        let mine = TaskSpec::load(expected)?;
        let my_hash = hex::encode(mine.canonical_hash()?);
        if my_hash != file.task_hash {
            bail!(
                "{} is a model of task `{}` ({}), not of task `{}` ({}) in {}: refused",
                model_path.display(),
                file.task,
                &file.task_hash[..16.min(file.task_hash.len())],
                mine.name,
                &my_hash[..16],
                expected.display()
            );
        }
    }
    let model = consortia_model::model_with_params(&task, &file.parameters)
        .with_context(|| format!("the parameters in {}", model_path.display()))?;
    if task.schema.ratings.is_some() {
        return recommend(&task, &file, data, out);
    }
    let st = file.standardization.as_ref().with_context(|| {
        format!(
            "{} has no standardisation: its round ran before the federation agreed one",
            model_path.display()
        )
    })?;
    let standardizer = Standardizer::from_parts(st.mean.clone(), st.std.clone())
        .with_context(|| format!("the standardisation in {}", model_path.display()))?;
    let rows = consortia_model::Dataset::load_for_scoring(data, &task.schema, id_column)?;
    let x = standardizer.apply_features(&rows.features)?;
    let scores = model.predict(&x)?;
    // Written beside `out` and renamed into place: a failure leaves no half file and
    // an earlier `out` untouched.
    let partial = out.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        writeln!(w, "{},score", id_column.unwrap_or("row"))?;
        for (id, s) in rows.ids.iter().zip(scores.iter()) {
            writeln!(w, "{},{s}", csv_field(id))?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, out)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", out.display()));
    }
    println!(
        "scored {} rows of {} with the model of round {} of task `{}`; written to {}",
        rows.ids.len(),
        data.display(),
        file.round,
        file.task,
        out.display()
    );
    Ok(())
}

/// The number of items `consortia score` recommends to each user.
const RECOMMENDATIONS: usize = 10;

/// `consortia score` for a matrix factorisation: `data` is the partner's own ratings
/// file (with the task's catalogue beside it, as its agent reads it). Each user's bias
/// and factors are fitted here from all of their ratings — the closed-form user step
/// the agent runs every round, never stored or sent — and the [`RECOMMENDATIONS`]
/// catalogue items each user is predicted to rate highest among those they have not
/// rated are written as `user,rank,item,predicted_rating` rows.
fn recommend(task: &TaskSpec, file: &ModelFile, data: &Path, out: &Path) -> Result<()> {
    use consortia_model::models::mf::{MfModel, TrainRatings};
    use consortia_model::ratings::{Catalogue, Ratings};
    let spec = task
        .schema
        .ratings
        .as_ref()
        .context("the task declares no [schema.ratings]")?;
    let model = MfModel::from_task(task, &file.parameters)?;
    let catalogue = Catalogue::load(spec, data)?;
    let ratings = Ratings::load(data, task, &catalogue)?;
    if ratings.unknown_items > 0 {
        eprintln!(
            "{}: {} ratings of items outside the task's catalogue were not used",
            data.display(),
            ratings.unknown_items
        );
    }
    let grouped = TrainRatings::new(&ratings, model.items());
    let users = model.solve_users(&grouped, task.model.l2);
    let partial = out.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        writeln!(w, "{},rank,{},predicted_rating", spec.user, spec.item)?;
        for (u, id) in ratings.users.iter().enumerate() {
            let (seen, _) = grouped.by_user.of(u);
            for (rank, item) in model
                .top_k(&users, u, seen, RECOMMENDATIONS)
                .into_iter()
                .enumerate()
            {
                let item_id = catalogue.id(item).unwrap_or_default();
                let r = model.predict_rating(&users, u, item as usize);
                writeln!(w, "{id},{},{item_id},{r:.4}", rank + 1)?;
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, out)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", out.display()));
    }
    println!(
        "top {RECOMMENDATIONS} recommendations for {} users of {} with the model of round {} of task `{}`; written to {}",
        ratings.users.len(),
        data.display(),
        file.round,
        file.task,
        out.display()
    );
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}
