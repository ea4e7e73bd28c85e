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
use consortia_client::user_factors::{self, Fitted, StoredUsers};
use consortia_model::TaskSpec;
use consortia_model::models::mf::UserFactors;
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
/// lines to `out`. With `expected_task`, a model of any other task is refused. For a
/// recommendation model, `agent_state` is the partner's agent state directory whose
/// users' factors are used ([`recommend`]).
pub(crate) fn score(
    model_path: &Path,
    data: &Path,
    out: &Path,
    id_column: Option<&str>,
    expected_task: Option<&Path>,
    agent_state: Option<&Path>,
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
        return recommend(&task, &file, data, out, agent_state);
    }
    if let Some(dir) = agent_state {
        eprintln!(
            "note: --state {} not used: only a recommendation model has users' factors",
            dir.display()
        );
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
/// file (with the task's catalogue beside it, as its agent reads it), and the
/// [`RECOMMENDATIONS`] catalogue items each user is predicted to rate highest among
/// those they have not rated are written as `user,rank,item,predicted_rating` rows.
///
/// Each user's bias and factors are the partner's own, never sent anywhere:
///
/// * with `agent_state`, the ones its agent kept there
///   ([`consortia_client::user_factors`]), when they were fitted against this very
///   model (same task, round and parameters). Factors of another task, or a damaged
///   file, are refused naming the file. When there are none, or they were fitted
///   against another round's model, they are fitted here instead, with a note on
///   stderr saying why; so are the users of `data` the agent kept none for;
/// * without it, fitted here from all of their ratings in `data`: the closed-form user
///   step the agent runs, which gives the factors the agent keeps when `data` is the
///   agent's own data file.
fn recommend(
    task: &TaskSpec,
    file: &ModelFile,
    data: &Path,
    out: &Path,
    agent_state: Option<&Path>,
) -> Result<()> {
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
    let fit = || model.solve_users(&grouped, task.model.l2);
    let users = match agent_state {
        None => fit(),
        Some(dir) => stored_users(task, file, dir, data, &ratings.users, fit)?,
    };
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

/// The users' factors of `ids` (the users of `data`) for [`recommend`] from the agent
/// state directory `dir`, or from `fit` (with a note on stderr) where it has none
/// fitted against the model in `file`.
fn stored_users(
    task: &TaskSpec,
    file: &ModelFile,
    dir: &Path,
    data: &Path,
    ids: &[i64],
    fit: impl FnOnce() -> UserFactors,
) -> Result<UserFactors> {
    let path = user_factors::path(dir, &task.name);
    let Some(stored) = StoredUsers::read(&path)? else {
        eprintln!(
            "note: {} holds no users' factors of task `{}` (its agent keeps them from its first              round of the task); fitting them from {}",
            dir.display(),
            task.name,
            data.display()
        );
        return Ok(fit());
    };
    let hash: [u8; 32] = hex::decode(&file.task_hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("the model file's task hash is not a SHA-256 in hex")?;
    match stored.fitted_against(&path, &task.name, &hash, file.round, &file.parameters)? {
        Fitted::OtherModel(why) => {
            eprintln!(
                "note: the users' factors in {} are not used: {why}; fitting them from {}                  against the model of round {} instead",
                path.display(),
                data.display(),
                file.round
            );
            Ok(fit())
        }
        Fitted::ThisModel => {
            let missing = stored.missing(ids);
            let fitted = (missing > 0).then(fit);
            let (users, from_fitted) = stored.select(ids, fitted.as_ref())?;
            if from_fitted > 0 {
                eprintln!(
                    "note: {from_fitted} of the {} users of {} have no factors in {}; theirs                      are fitted from their ratings",
                    ids.len(),
                    data.display(),
                    path.display()
                );
            }
            eprintln!(
                "the users' factors of {} users are the agent's, from {} (fitted against the                  model of round {})",
                ids.len() - from_fitted,
                path.display(),
                stored.model_round
            );
            Ok(users)
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}
