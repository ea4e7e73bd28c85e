//! A partner's rows: loading a CSV through the feature schema, stratified holdout
//! splits, and splitting one CSV into one file per value of a column.
//!
//! Cells are trimmed of surrounding whitespace before they are read. Every error
//! names the file, the 1-based line of the file, the 1-based data row (the header
//! is not a row) and the column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
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
    /// validated first). Columns the schema does not name are ignored. The file is
    /// read once, a chunk at a time: only the encoded matrix is kept, never its text.
    pub fn load_csv(path: impl AsRef<Path>, schema: &FeatureSchema) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        Self::from_csv_reader(open(path, &file)?, &file, schema, None)
    }

    /// Like [`Dataset::load_csv`], for CSV text already in memory; `file` names it
    /// in errors.
    pub fn from_csv_str(text: &str, file: &str, schema: &FeatureSchema) -> Result<Self, DataError> {
        Self::from_csv_reader(text.as_bytes(), file, schema, None)
    }

    /// Reads a partner's CSV for `task`: as [`Dataset::load_csv`], and a numeric
    /// target (a `glm`'s label) outside its family's support — negative, or zero for
    /// Gamma — is refused with the file, row and column.
    pub fn load_task_csv(path: impl AsRef<Path>, task: &TaskSpec) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        Self::from_csv_reader(open(path, &file)?, &file, &task.schema, task.model.family)
    }

    fn from_csv_reader(
        input: impl Read,
        file: &str,
        schema: &FeatureSchema,
        family: Option<GlmFamily>,
    ) -> Result<Self, DataError> {
        let table = encode(input, file, schema, Labels::Required(family), None)?;
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
        let table = encode(
            open(path, &file)?,
            &file,
            schema,
            Labels::Ignored,
            id_column,
        )?;
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
    /// Each row's id, when scoring ([`Labels::Ignored`]); empty otherwise.
    ids: Vec<String>,
}

/// Opens a data file for [`encode`].
fn open(path: &Path, file: &str) -> Result<std::fs::File, DataError> {
    std::fs::File::open(path).map_err(|error| DataError::Read {
        file: file.to_owned(),
        error,
    })
}

/// Which of two errors reading a file into a string and then checking it whole would
/// have reported: lower first. The file is read once, a chunk at a time, so a later
/// row can still hold an error that comes first in that order (a syntax error after a
/// bad cell); [`encode`] keeps the first error of the lowest rank.
fn rank(e: &DataError) -> u8 {
    match e {
        DataError::Read { .. } => 0,
        DataError::Schema(_) => 1,
        DataError::Syntax { .. } => 2,
        DataError::Empty { .. } => 3,
        DataError::DuplicateColumn { .. } => 4,
        DataError::FieldCount { .. } => 5,
        DataError::MissingColumn { .. } => 6,
        _ => 7,
    }
}

/// Where the schema's columns are in the header.
struct Columns<'a> {
    label: Option<usize>,
    id: Option<usize>,
    numeric: Vec<(usize, &'a str, MissingPolicy, bool)>,
    categorical: Vec<CategoricalColumn<'a>>,
}

impl<'a> Columns<'a> {
    /// Finds the columns in `header`, in the order the errors name them: label, id,
    /// numeric features, categorical features.
    fn find(
        header: &[String],
        file: &str,
        schema: &'a FeatureSchema,
        label_mode: Labels,
        id_column: Option<&str>,
    ) -> Result<Self, DataError> {
        let find = |column: &str, role: &'static str| {
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| DataError::MissingColumn {
                    file: file.to_owned(),
                    column: column.to_owned(),
                    role,
                    header: header.to_vec(),
                })
        };
        let label = match label_mode {
            Labels::Required(_) => Some(find(&schema.label.column, "label column")?),
            Labels::Ignored => None,
        };
        let id = id_column.map(|c| find(c, "id column")).transpose()?;
        let numeric = schema
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
        let categorical = schema
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
        Ok(Columns {
            label,
            id,
            numeric,
            categorical,
        })
    }
}

/// The rows encoded so far.
struct Rows {
    /// Row-major, `schema.feature_count()` values a row.
    features: Vec<f64>,
    labels: Vec<f64>,
    ids: Vec<String>,
    /// The negative label: the schema's, or the first non-positive value seen.
    negative: Option<String>,
}

impl Rows {
    /// Encodes data row `row` (1-based), the record on `record.line`.
    fn push(
        &mut self,
        record: &csv::RecordRef<'_>,
        row: usize,
        cols: &Columns<'_>,
        file: &str,
        schema: &FeatureSchema,
        label_mode: Labels,
    ) -> Result<(), DataError> {
        let cell = |i: usize| record.field(i).trim();
        let at = |column: &str| {
            Box::new(CellAt {
                file: file.to_owned(),
                line: record.line,
                row,
                column: column.to_owned(),
            })
        };

        for &(i, column, policy, log1p) in &cols.numeric {
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
                self.features.push(x.ln_1p());
            } else {
                self.features.push(x);
            }
        }
        for c in &cols.categorical {
            let value = cell(c.index);
            let Some(&hot) = c.positions.get(value) else {
                return Err(DataError::UnknownCategory {
                    at: at(c.name),
                    value: value.to_owned(),
                    categories: c.categories.to_vec(),
                });
            };
            self.features
                .extend((0..c.categories.len()).map(|k| if k == hot { 1.0 } else { 0.0 }));
        }

        if label_mode == Labels::Ignored {
            self.ids.push(match cols.id {
                Some(i) => cell(i).to_owned(),
                None => row.to_string(),
            });
        }
        let Some(label_idx) = cols.label else {
            return Ok(());
        };
        let value = cell(label_idx);
        let Some(positive) = schema.label.positive.as_deref() else {
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
            self.labels.push(y);
            return Ok(());
        };
        let y = if value == positive {
            1.0
        } else {
            match &self.negative {
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
                    self.negative = Some(value.to_owned());
                    0.0
                }
            }
        };
        self.labels.push(y);
        Ok(())
    }
}

/// Reads CSV from `input` and encodes it through `schema` (validated first), a
/// record at a time: what is kept is the encoded rows, never the text or the records.
///
/// Errors are those, and in the order, of reading the whole input and then checking
/// it: an unreadable or non-UTF-8 input, an invalid schema, a syntax error, no header,
/// a duplicate column, a row with the wrong number of fields, a missing column, and
/// then the first bad cell in row order ([`rank`]). Once an error is found no more
/// rows are encoded; the rest of the input is only read for an error that comes first.
fn encode(
    input: impl Read,
    file: &str,
    schema: &FeatureSchema,
    label_mode: Labels,
    id_column: Option<&str>,
) -> Result<Encoded, DataError> {
    let mut error: Option<DataError> = schema.validate().err().map(DataError::from);
    let fail = |error: &mut Option<DataError>, rows: &mut Rows, e: DataError| {
        if error.as_ref().is_none_or(|old| rank(&e) < rank(old)) {
            *error = Some(e);
            // Nothing more will be encoded: give the memory back.
            rows.features = Vec::new();
            rows.labels = Vec::new();
            rows.ids = Vec::new();
        }
    };
    let mut header: Option<Vec<String>> = None;
    let mut cols: Option<Columns<'_>> = None;
    let mut count = 0usize;
    let mut rows = Rows {
        features: Vec::new(),
        labels: Vec::new(),
        ids: Vec::new(),
        negative: schema.label.negative.clone(),
    };
    let read = csv::read(input, |record| {
        let Some(header) = &header else {
            let names: Vec<String> = record.fields().map(|h| h.trim().to_owned()).collect();
            if let Some(h) = names
                .iter()
                .enumerate()
                .find_map(|(i, h)| names[..i].contains(h).then_some(h))
            {
                let e = DataError::DuplicateColumn {
                    file: file.to_owned(),
                    column: h.clone(),
                };
                fail(&mut error, &mut rows, e);
            }
            match Columns::find(&names, file, schema, label_mode, id_column) {
                Ok(c) => cols = Some(c),
                Err(e) => fail(&mut error, &mut rows, e),
            }
            header = Some(names);
            return;
        };
        count += 1;
        if record.len() != header.len() {
            let e = DataError::FieldCount {
                file: file.to_owned(),
                line: record.line,
                row: count,
                found: record.len(),
                expected: header.len(),
            };
            fail(&mut error, &mut rows, e);
            return;
        }
        if error.is_some() {
            return;
        }
        if let Some(cols) = &cols
            && let Err(e) = rows.push(&record, count, cols, file, schema, label_mode)
        {
            fail(&mut error, &mut rows, e);
        }
    });
    match read {
        Ok(()) => {}
        Err(csv::ReadError::Io(error)) => {
            return Err(DataError::Read {
                file: file.to_owned(),
                error,
            });
        }
        Err(csv::ReadError::Syntax(e)) => {
            let e = DataError::Syntax {
                file: file.to_owned(),
                line: e.line,
                problem: e.message,
            };
            fail(&mut error, &mut rows, e);
        }
    }
    if header.is_none() {
        let e = DataError::Empty {
            file: file.to_owned(),
        };
        fail(&mut error, &mut rows, e);
    }
    if let Some(e) = error {
        return Err(e);
    }
    let mut features = rows.features;
    features.shrink_to_fit();
    let features = Array2::from_shape_vec((count, schema.feature_count()), features)
        .map_err(|e| DataError::Shape(e.to_string()))?;
    Ok(Encoded {
        features,
        labels: rows.labels,
        ids: rows.ids,
    })
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
        let (train, holdout) = self.holdout_rows(fraction, seed);
        (self.select(&train), self.select(&holdout))
    }

    /// [`Dataset::split_holdout`], consuming the dataset: the same two parts, with the
    /// training rows moved down within this dataset's own buffer and only the held-out
    /// rows copied, so the split needs memory for the held-out rows alone rather than
    /// for a second copy of every row.
    pub fn into_holdout_split(self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let (train, holdout) = self.holdout_rows(fraction, seed);
        let held_out = self.select(&holdout);
        if !self.features.is_standard_layout() {
            return (self.select(&train), held_out);
        }
        let width = self.features.ncols();
        let labels = self.labels.select(Axis(0), &train);
        let (mut values, offset) = self.features.into_raw_vec_and_offset();
        let start = offset.unwrap_or(0);
        // `train` is ascending, so row `r` moves to `i <= r`: a row is moved before
        // anything overwrites it.
        for (i, &r) in train.iter().enumerate() {
            let from = start + r * width;
            let to = i * width;
            if from != to {
                values.copy_within(from..from + width, to);
            }
        }
        values.truncate(train.len() * width);
        values.shrink_to_fit();
        let features = Array2::from_shape_vec((train.len(), width), values)
            .expect("the training rows fill their shape exactly");
        let train = Dataset {
            features,
            labels,
            numeric_target: self.numeric_target,
        };
        (train, held_out)
    }

    /// The rows of each part of [`Dataset::split_holdout`], ascending.
    fn holdout_rows(&self, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
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
        (train, holdout)
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

    fn schema() -> FeatureSchema {
        FeatureSchema {
            label: crate::schema::LabelSpec {
                column: "y".into(),
                positive: Some("yes".into()),
                negative: None,
            },
            numeric: vec!["a".into()],
            log1p: Vec::new(),
            categorical: vec![crate::schema::CategoricalSpec {
                column: "c".into(),
                categories: vec!["x".into(), "z".into()],
            }],
            missing: Default::default(),
            bounds: Default::default(),
            ratings: None,
        }
    }

    /// The error loading `bytes` from a file gives, as text.
    fn error_of(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.csv");
        std::fs::write(&path, bytes).unwrap();
        let file = path.display().to_string();
        Dataset::load_csv(&path, &schema())
            .unwrap_err()
            .to_string()
            .replace(&file, "p.csv")
    }

    #[test]
    fn a_later_error_that_a_whole_file_check_reports_first_still_wins() {
        // Read in one pass, a bad cell in row 1 is found before a problem further down
        // that reading the whole file first would have reported instead.
        let bad_cell = "y,a,c\nyes,one,x\n";
        assert_eq!(
            error_of(bad_cell.as_bytes()),
            "p.csv:2: row 1, column `a`: \"one\" is not a finite number"
        );
        assert_eq!(
            error_of(format!("{bad_cell}no,1,x\nno,1\n").as_bytes()),
            "p.csv:4: row 3 has 2 fields, but the header has 3"
        );
        assert_eq!(
            error_of(format!("{bad_cell}no,1\n\"x\"y,1,x\n").as_bytes()),
            "p.csv:4: text follows the closing quote of a quoted field; fix the quoting on that line"
        );
        let not_utf8 = std::io::read_to_string(&b"\xff"[..]).unwrap_err();
        assert_eq!(
            error_of(format!("{bad_cell}\"open\n").as_bytes()),
            "p.csv:3: a quoted field is never closed; fix the quoting on that line"
        );
        let mut bytes = format!("{bad_cell}\"open\n").into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        assert_eq!(error_of(&bytes), format!("cannot read p.csv: {not_utf8}"));
        // A missing column comes after field counts, before cells.
        assert_eq!(
            error_of(b"y,a\nyes,1\nno\n"),
            "p.csv:3: row 2 has 1 fields, but the header has 2"
        );
        assert!(error_of(b"y,a\nyes,x\n").starts_with("p.csv: the header has no column `c`"));
        // A duplicate column comes before a field count.
        assert_eq!(
            error_of(b"y,a,a\nyes\n"),
            "p.csv: the header names column `a` twice; rename one of them"
        );
        assert_eq!(
            error_of(b"\n\n"),
            "p.csv is empty; it needs a header row naming its columns"
        );
    }

    #[test]
    fn the_consuming_split_equals_the_copying_one() {
        let text: String = std::iter::once("y,a,c\n".to_owned())
            .chain((0..503).map(|i| {
                let y = if i % 3 == 0 { "yes" } else { "no" };
                let c = if i % 2 == 0 { "x" } else { "z" };
                format!("{y},{i},{c}\n")
            }))
            .collect();
        let d = Dataset::from_csv_str(&text, "p.csv", &schema()).unwrap();
        let mut numeric = schema();
        numeric.label.positive = None;
        let numeric_text = text.replace("yes", "2.5").replace("no", "-1");
        let n = Dataset::from_csv_str(&numeric_text, "p.csv", &numeric).unwrap();
        for data in [d, n] {
            for (fraction, seed) in [(0.2, 7), (0.0, 1), (1.0, 1), (0.5, 99), (f64::NAN, 3)] {
                let expected = data.split_holdout(fraction, seed);
                assert_eq!(data.clone().into_holdout_split(fraction, seed), expected);
            }
        }
        // A dataset whose rows are not laid out one after another is split too.
        let x = ndarray::Array2::from_shape_fn((4, 2), |(i, j)| (i * 2 + j) as f64);
        let strided = Dataset::new(x.reversed_axes(), ndarray::array![1.0, 0.0]).unwrap();
        assert_eq!(
            strided.clone().into_holdout_split(0.5, 1),
            strided.split_holdout(0.5, 1)
        );
    }

    #[test]
    fn file_stems() {
        assert_eq!(file_stem_for("Month-to-month"), "month_to_month");
        assert_eq!(file_stem_for("Two year"), "two_year");
        assert_eq!(file_stem_for("../../etc"), "etc");
        assert_eq!(file_stem_for(""), "blank");
        assert_eq!(file_stem_for("é"), "blank");
    }
}
