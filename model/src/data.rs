//! A partner's rows: loading a CSV through the feature schema, stratified holdout
//! splits, and splitting one CSV into one file per value of a column.
//!
//! Cells are trimmed of surrounding whitespace before they are read. Every error
//! names the file, the 1-based line of the file, the 1-based data row (the header
//! is not a row) and the column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::csv;
use crate::schema::{FeatureSchema, InvalidField, MissingPolicy};
use crate::task::{GlmFamily, TaskSpec};

/// Encoded rows: the design matrix before standardisation, and 0/1 labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Array2<f64>,
    labels: Array1<f64>,
    /// Labels are numbers (a regression target), not 0/1 classes.
    numeric_target: bool,
}

/// Why a data file could not be read, split or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {file}: {error}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {file}: {error}")]
    Write {
        /// The file.
        file: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not well-formed CSV.
    #[error("{file}:{line}: {problem}; fix the quoting on that line")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The file has no header row.
    #[error("{file} is empty; it needs a header row naming its columns")]
    Empty {
        /// The file.
        file: String,
    },
    /// A column is named twice in the header.
    #[error("{file}: the header names column `{column}` twice; rename one of them")]
    DuplicateColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
    },
    /// A column needed by the schema is not in the header.
    #[error("{file}: the header has no column `{column}` (the {role}); the header is {header:?}")]
    MissingColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// What the column is needed for.
        role: &'static str,
        /// The columns the header does have.
        header: Vec<String>,
    },
    /// A row has more or fewer fields than the header.
    #[error("{file}:{line}: row {row} has {found} fields, but the header has {expected}")]
    FieldCount {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based data row.
        row: usize,
        /// Fields found.
        found: usize,
        /// Fields in the header.
        expected: usize,
    },
    /// A numeric cell does not hold a finite number.
    #[error("{at}: {value:?} is not a finite number")]
    NotNumeric {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
    },
    /// A cell of a `log1p` column holds −1 or less, where `ln(1 + x)` is undefined.
    #[error(
        "{at}: {value:?} is not above -1, so ln(1 + x) is undefined; the task file lists `{}` under `log1p` in [schema]",
        at.column
    )]
    OutsideLog1p {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
    },
    /// A numeric cell is empty and the schema sets no missing-value policy for it.
    #[error(
        "{at} is empty; fill it in, or set `{} = \"zero\"` under [schema.missing] in the task file",
        at.column
    )]
    EmptyNumeric {
        /// Where.
        at: Box<CellAt>,
    },
    /// A categorical cell holds a value outside the schema's category list.
    #[error(
        "{at}: {value:?} is not one of the categories {categories:?} that the task file lists for it"
    )]
    UnknownCategory {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
        /// The allowed categories.
        categories: Vec<String>,
    },
    /// A label cell holds a third distinct value, or a value other than the
    /// schema's negative one.
    #[error(
        "{at}: label {value:?} is neither the positive label {positive:?} nor the negative label {negative:?}; a label column holds exactly two values"
    )]
    UnknownLabel {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
        /// The positive label.
        positive: String,
        /// The negative label (from the schema, or the first non-positive value seen).
        negative: String,
    },
    /// A numeric label outside what the model's family can fit.
    #[error("{at}: target {value:?} is not {expected}")]
    BadTarget {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
        /// What the target must be.
        expected: &'static str,
    },
    /// The schema itself is invalid.
    #[error("invalid feature schema: {0}")]
    Schema(#[from] InvalidField),
    /// Features and labels do not fit together.
    #[error("invalid dataset: {0}")]
    Shape(String),
}

/// Where a bad cell is: the file, its 1-based line, its 1-based data row (the
/// header is not a row) and its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellAt {
    /// The file.
    pub file: String,
    /// 1-based line of the file.
    pub line: usize,
    /// 1-based data row.
    pub row: usize,
    /// The column.
    pub column: String,
}

impl fmt::Display for CellAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: row {}, column `{}`",
            self.file, self.line, self.row, self.column
        )
    }
}

/// How one categorical column is read: its index in the header, its name, each
/// category's one-hot position, and the category list.
struct CategoricalColumn<'a> {
    index: usize,
    name: &'a str,
    positions: HashMap<&'a str, usize>,
    categories: &'a [String],
}

impl Dataset {
    /// Builds a dataset from an encoded design matrix and 0/1 labels, checking that
    /// they have the same number of rows, that features are finite and that labels
    /// are 0 or 1.
    pub fn new(features: Array2<f64>, labels: Array1<f64>) -> Result<Self, DataError> {
        if features.nrows() != labels.len() {
            return Err(DataError::Shape(format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.len()
            )));
        }
        if let Some(((r, c), v)) = features.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(DataError::Shape(format!(
                "feature ({r}, {c}) is {v}, not a finite number"
            )));
        }
        if let Some((i, v)) = labels
            .iter()
            .enumerate()
            .find(|(_, v)| **v != 0.0 && **v != 1.0)
        {
            return Err(DataError::Shape(format!("label {i} is {v}, not 0 or 1")));
        }
        Ok(Self {
            features,
            labels,
            numeric_target: false,
        })
    }

    /// Reads a CSV file with a header row and encodes it through `schema` (which is
    /// validated first). Columns the schema does not name are ignored. The whole
    /// file is read into memory.
    pub fn load_csv(path: impl AsRef<Path>, schema: &FeatureSchema) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DataError::Read {
            file: file.clone(),
            error,
        })?;
        Self::from_csv_str(&text, &file, schema)
    }

    /// Like [`Dataset::load_csv`], for CSV text already in memory; `file` names it
    /// in errors.
    pub fn from_csv_str(text: &str, file: &str, schema: &FeatureSchema) -> Result<Self, DataError> {
        Self::from_csv_text(text, file, schema, None)
    }

    /// Reads a partner's CSV for `task`: as [`Dataset::load_csv`], and a numeric
    /// target (a `glm`'s label) outside its family's support — negative, or zero for
    /// Gamma — is refused with the file, row and column.
    pub fn load_task_csv(path: impl AsRef<Path>, task: &TaskSpec) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DataError::Read {
            file: file.clone(),
            error,
        })?;
        Self::from_csv_text(&text, &file, &task.schema, task.model.family)
    }

    fn from_csv_text(
        text: &str,
        file: &str,
        schema: &FeatureSchema,
        family: Option<GlmFamily>,
    ) -> Result<Self, DataError> {
        let table = encode(text, file, schema, Labels::Required(family), None)?;
        Ok(Self {
            features: table.features,
            labels: Array1::from(table.labels),
            numeric_target: schema.label.positive.is_none(),
        })
    }

    /// Reads the rows of a CSV file to score: the features through `schema`, the
    /// label column ignored (it need not be there), and the value of `id_column` of
    /// each row when one is named (the 1-based row number otherwise). Errors name the
    /// file, line, row and column as [`Dataset::load_csv`]'s do.
    pub fn load_for_scoring(
        path: impl AsRef<Path>,
        schema: &FeatureSchema,
        id_column: Option<&str>,
    ) -> Result<ScoringRows, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DataError::Read {
            file: file.clone(),
            error,
        })?;
        let table = encode(&text, &file, schema, Labels::Ignored, id_column)?;
        Ok(ScoringRows {
            features: table.features,
            ids: table.ids,
        })
    }
}

/// Rows read for scoring ([`Dataset::load_for_scoring`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringRows {
    /// The design matrix before standardisation.
    pub features: Array2<f64>,
    /// Each row's id: the id column's value, or the 1-based row number.
    pub ids: Vec<String>,
}

/// Whether the label column is read, and for a numeric target the family whose
/// support it must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Labels {
    Required(Option<GlmFamily>),
    Ignored,
}

/// What [`encode`] read.
struct Encoded {
    features: Array2<f64>,
    labels: Vec<f64>,
    ids: Vec<String>,
}

/// Encodes CSV text through `schema` (validated first).
fn encode(
    text: &str,
    file: &str,
    schema: &FeatureSchema,
    label_mode: Labels,
    id_column: Option<&str>,
) -> Result<Encoded, DataError> {
    {
        schema.validate()?;
        let (header, rows) = read_table(text, file)?;
        let find = |column: &str, role: &'static str| {
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| DataError::MissingColumn {
                    file: file.to_owned(),
                    column: column.to_owned(),
                    role,
                    header: header.clone(),
                })
        };
        let label_idx = match label_mode {
            Labels::Required(_) => Some(find(&schema.label.column, "label column")?),
            Labels::Ignored => None,
        };
        let id_idx = id_column.map(|c| find(c, "id column")).transpose()?;
        let mut ids = Vec::with_capacity(rows.len());
        let numeric: Vec<(usize, &str, MissingPolicy, bool)> = schema
            .numeric
            .iter()
            .map(|c| {
                Ok((
                    find(c, "numeric feature")?,
                    c.as_str(),
                    schema.missing_policy(c),
                    schema.is_log1p(c),
                ))
            })
            .collect::<Result<_, DataError>>()?;
        let categorical: Vec<CategoricalColumn<'_>> = schema
            .categorical
            .iter()
            .map(|c| {
                Ok(CategoricalColumn {
                    index: find(&c.column, "categorical feature")?,
                    name: c.column.as_str(),
                    positions: c
                        .categories
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.as_str(), i))
                        .collect(),
                    categories: c.categories.as_slice(),
                })
            })
            .collect::<Result<_, DataError>>()?;

        let width = schema.feature_count();
        let mut features = Vec::with_capacity(rows.len().saturating_mul(width));
        let mut labels = Vec::with_capacity(rows.len());
        let positive = schema.label.positive.as_deref();
        let mut negative: Option<String> = schema.label.negative.clone();

        for (r, record) in rows.iter().enumerate() {
            let cell = |i: usize| record.fields[i].trim();
            let at = |column: &str| {
                Box::new(CellAt {
                    file: file.to_owned(),
                    line: record.line,
                    row: r + 1,
                    column: column.to_owned(),
                })
            };

            for &(i, column, policy, log1p) in &numeric {
                let value = cell(i);
                let x = if value.is_empty() {
                    match policy {
                        MissingPolicy::Zero => 0.0,
                        MissingPolicy::Error => {
                            return Err(DataError::EmptyNumeric { at: at(column) });
                        }
                    }
                } else {
                    match value.parse::<f64>() {
                        Ok(x) if x.is_finite() => x,
                        _ => {
                            return Err(DataError::NotNumeric {
                                at: at(column),
                                value: value.to_owned(),
                            });
                        }
                    }
                };
                if log1p {
                    // ln(1 + x) is finite for every finite x > −1.
                    if x <= -1.0 {
                        return Err(DataError::OutsideLog1p {
                            at: at(column),
                            value: value.to_owned(),
                        });
                    }
                    features.push(x.ln_1p());
                } else {
                    features.push(x);
                }
            }
            for c in &categorical {
                let value = cell(c.index);
                let Some(&hot) = c.positions.get(value) else {
                    return Err(DataError::UnknownCategory {
                        at: at(c.name),
                        value: value.to_owned(),
                        categories: c.categories.to_vec(),
                    });
                };
                features.extend((0..c.categories.len()).map(|k| if k == hot { 1.0 } else { 0.0 }));
            }

            ids.push(match id_idx {
                Some(i) => cell(i).to_owned(),
                None => (r + 1).to_string(),
            });
            let Some(label_idx) = label_idx else {
                continue;
            };
            let value = cell(label_idx);
            let Some(positive) = positive else {
                // A numeric target, checked against the model family's support.
                let bad = |expected| DataError::BadTarget {
                    at: at(&schema.label.column),
                    value: value.to_owned(),
                    expected,
                };
                let y = value
                    .parse::<f64>()
                    .ok()
                    .filter(|y| y.is_finite())
                    .ok_or_else(|| bad("a finite number"))?;
                if let Labels::Required(Some(family)) = label_mode {
                    family.admits(y).map_err(bad)?;
                }
                labels.push(y);
                continue;
            };
            let y = if value == positive {
                1.0
            } else {
                match &negative {
                    Some(n) if n == value => 0.0,
                    Some(n) => {
                        return Err(DataError::UnknownLabel {
                            at: at(&schema.label.column),
                            value: value.to_owned(),
                            positive: positive.to_owned(),
                            negative: n.clone(),
                        });
                    }
                    None => {
                        negative = Some(value.to_owned());
                        0.0
                    }
                }
            };
            labels.push(y);
        }

        let features = Array2::from_shape_vec((rows.len(), width), features)
            .map_err(|e| DataError::Shape(e.to_string()))?;
        Ok(Encoded {
            features,
            labels,
            ids,
        })
    }
}

impl Dataset {
    /// Stacks datasets with the same feature count, in order.
    pub fn concat(parts: &[&Dataset]) -> Result<Self, DataError> {
        let Some(first) = parts.first() else {
            return Err(DataError::Shape("no datasets to concatenate".into()));
        };
        let width = first.feature_count();
        if let Some(bad) = parts.iter().find(|p| p.feature_count() != width) {
            return Err(DataError::Shape(format!(
                "cannot concatenate datasets with {width} and {} features",
                bad.feature_count()
            )));
        }
        if parts
            .iter()
            .any(|p| p.numeric_target != first.numeric_target)
        {
            return Err(DataError::Shape(
                "cannot concatenate a dataset of numeric targets with one of classes".into(),
            ));
        }
        let features: Vec<_> = parts.iter().map(|p| p.features.view()).collect();
        let labels: Vec<_> = parts.iter().map(|p| p.labels.view()).collect();
        Ok(Self {
            features: ndarray::concatenate(Axis(0), &features)
                .map_err(|e| DataError::Shape(e.to_string()))?,
            labels: ndarray::concatenate(Axis(0), &labels)
                .map_err(|e| DataError::Shape(e.to_string()))?,
            numeric_target: first.numeric_target,
        })
    }

    /// The encoded features, one row per example (not standardised).
    pub fn features(&self) -> &Array2<f64> {
        &self.features
    }

    /// The labels: 1 for the positive label, 0 otherwise; or the numeric target of a
    /// regression task.
    pub fn labels(&self) -> &Array1<f64> {
        &self.labels
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of encoded features per row.
    pub fn feature_count(&self) -> usize {
        self.features.ncols()
    }

    /// Number of rows with label 1.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&y| y == 1.0).count()
    }

    /// Splits the rows into `(train, holdout)`, holding out `round(fraction * n)` of
    /// each label's `n` rows (of all `n` rows for a numeric target), chosen by a
    /// ChaCha8 generator seeded with `seed`. The
    /// same seed and data give the same split; both parts keep the original row
    /// order. `fraction` is clamped to [0, 1], and NaN counts as 0 (the task file
    /// already restricts it to (0, 1)).
    pub fn split_holdout(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut train = Vec::with_capacity(self.len());
        let mut holdout = Vec::with_capacity(self.len());
        let strata: &[Option<f64>] = if self.numeric_target {
            &[None]
        } else {
            &[Some(1.0), Some(0.0)]
        };
        for &class in strata {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| class.is_none_or(|c| self.labels[i] == c))
                .collect();
            rows.shuffle(&mut rng);
            // The product is at most rows.len(), so the cast cannot truncate.
            let k = (fraction * rows.len() as f64).round() as usize;
            holdout.extend_from_slice(&rows[..k]);
            train.extend_from_slice(&rows[k..]);
        }
        train.sort_unstable();
        holdout.sort_unstable();
        (self.select(&train), self.select(&holdout))
    }

    fn select(&self, rows: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), rows),
            labels: self.labels.select(Axis(0), rows),
            numeric_target: self.numeric_target,
        }
    }
}

/// Parses CSV text into its trimmed header and data records.
fn read_table(text: &str, file: &str) -> Result<(Vec<String>, Vec<csv::Record>), DataError> {
    let mut records = csv::parse(text)
        .map_err(|e| DataError::Syntax {
            file: file.to_owned(),
            line: e.line,
            problem: e.message,
        })?
        .into_iter();
    let header: Vec<String> = records
        .next()
        .ok_or_else(|| DataError::Empty {
            file: file.to_owned(),
        })?
        .fields
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    for (i, h) in header.iter().enumerate() {
        if header[..i].contains(h) {
            return Err(DataError::DuplicateColumn {
                file: file.to_owned(),
                column: h.clone(),
            });
        }
    }
    let rows: Vec<csv::Record> = records.collect();
    for (r, record) in rows.iter().enumerate() {
        if record.fields.len() != header.len() {
            return Err(DataError::FieldCount {
                file: file.to_owned(),
                line: record.line,
                row: r + 1,
                found: record.fields.len(),
                expected: header.len(),
            });
        }
    }
    Ok((header, rows))
}

/// A partner name (`[a-z0-9-]`, as `consortia pki` accepts) for the partner
/// holding the rows with `value`, e.g. `"Month-to-month"` → `"month-to-month"`.
pub fn partner_name(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes one CSV file into `out_dir` (created if needed) for each distinct
/// (trimmed) value of `column` in `input_path`, each with the input's header and
/// its rows in input order. Files are named after the value: lower-cased, every run
/// of characters other than ASCII letters and digits replaced by `_`
/// (`Month-to-month` → `month_to_month.csv`), with `_2`, `_3`, … appended if two
/// values give the same name. Returns `(value, file, rows)` sorted by value.
pub fn partition_csv_by_column(
    input_path: impl AsRef<Path>,
    column: &str,
    out_dir: impl AsRef<Path>,
) -> Result<Vec<(String, PathBuf, usize)>, DataError> {
    let input_path = input_path.as_ref();
    let out_dir = out_dir.as_ref();
    let file = input_path.display().to_string();
    let text = std::fs::read_to_string(input_path).map_err(|error| DataError::Read {
        file: file.clone(),
        error,
    })?;
    let (header, rows) = read_table(&text, &file)?;
    let idx = header
        .iter()
        .position(|h| h == column.trim())
        .ok_or_else(|| DataError::MissingColumn {
            file: file.clone(),
            column: column.to_owned(),
            role: "column to partition by",
            header: header.clone(),
        })?;

    let mut groups: BTreeMap<String, Vec<&csv::Record>> = BTreeMap::new();
    for record in &rows {
        groups
            .entry(record.fields[idx].trim().to_owned())
            .or_default()
            .push(record);
    }

    std::fs::create_dir_all(out_dir).map_err(|error| DataError::Write {
        file: out_dir.display().to_string(),
        error,
    })?;
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (value, records) in groups {
        let stem = file_stem_for(&value);
        let mut name = format!("{stem}.csv");
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{stem}_{n}.csv");
            n += 1;
        }
        let mut content = String::new();
        csv::write_record(&mut content, &header);
        for record in &records {
            csv::write_record(&mut content, &record.fields);
        }
        let path = out_dir.join(&name);
        std::fs::write(&path, content).map_err(|error| DataError::Write {
            file: path.display().to_string(),
            error,
        })?;
        out.push((value, path, records.len()));
    }
    Ok(out)
}

fn file_stem_for(value: &str) -> String {
    let mut stem = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            stem.push(c.to_ascii_lowercase());
        } else if !stem.ends_with('_') {
            stem.push('_');
        }
    }
    let stem = stem.trim_matches('_');
    if stem.is_empty() {
        "blank".to_owned()
    } else {
        stem.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems() {
        assert_eq!(file_stem_for("Month-to-month"), "month_to_month");
        assert_eq!(file_stem_for("Two year"), "two_year");
        assert_eq!(file_stem_for("../../etc"), "etc");
        assert_eq!(file_stem_for(""), "blank");
        assert_eq!(file_stem_for("é"), "blank");
    }
}
