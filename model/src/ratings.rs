//! A recommendation task's data: the public item catalogue, a partner's ratings and
//! their per-user holdout split.
//!
//! A task for [`crate::models::mf`] declares `[schema.ratings]` ([`RatingsSpec`]): the
//! user and item columns (integer ids), the rating scale, and the public item catalogue
//! — a CSV of item ids, pinned in the task by its item count and the SHA-256 of its
//! bytes. The catalogue's order is the order of the items in the model's shared
//! parameters, so every partner must hold the same file: a different one is refused.
//! A relative catalogue path is resolved beside the ratings file that names it.
//!
//! A rating of an item that is not in the catalogue cannot be learned from (the item
//! has no parameters); it is counted in [`Ratings::unknown_items`] and reported, never
//! dropped silently. Every other bad cell is refused naming the file, row and column.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::csv;
use crate::data::{CellAt, DataError};
use crate::schema::InvalidField;
use crate::task::TaskSpec;

/// The most items a catalogue may hold.
pub const MAX_ITEMS: usize = 1_000_000;
/// The largest catalogue file read, in bytes.
pub const MAX_CATALOGUE_BYTES: u64 = 256 << 20;

/// `[schema.ratings]`: which columns are the user and the item, the rating scale and
/// the public item catalogue. The rating itself is the schema's label column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingsSpec {
    /// Column holding the user id (an integer).
    pub user: String,
    /// Column holding the item id (an integer, listed in the catalogue).
    pub item: String,
    /// The rating scale `[lo, hi]`: a rating outside it is refused; predictions are
    /// clipped to it.
    pub scale: [f64; 2],
    /// The catalogue CSV (relative paths are resolved beside the ratings file).
    pub catalogue: String,
    /// The catalogue's item-id column.
    pub catalogue_column: String,
    /// Items in the catalogue (1 to [`MAX_ITEMS`]): sizes the model.
    pub items: usize,
    /// SHA-256 of the catalogue file's bytes, lower-case hex (`sha256sum FILE`).
    pub catalogue_sha256: String,
}

impl RatingsSpec {
    /// Checks the columns, the scale, the item count and the hash's form.
    pub fn validate(&self, label: &str) -> Result<(), InvalidField> {
        for (field, column) in [
            ("schema.ratings.user", &self.user),
            ("schema.ratings.item", &self.item),
            ("schema.ratings.catalogue_column", &self.catalogue_column),
            ("schema.ratings.catalogue", &self.catalogue),
        ] {
            if column.trim().is_empty() {
                return Err(InvalidField::new(field, column, "a non-empty name"));
            }
        }
        if self.user == self.item || self.user == label || self.item == label {
            return Err(InvalidField::new(
                "schema.ratings",
                [&self.user, &self.item, label],
                "three different columns for the user, the item and the rating (the label)",
            ));
        }
        let [lo, hi] = self.scale;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(InvalidField::new(
                "schema.ratings.scale",
                self.scale,
                "[lo, hi] with finite lo < hi",
            ));
        }
        if !(1..=MAX_ITEMS).contains(&self.items) {
            return Err(InvalidField::new(
                "schema.ratings.items",
                self.items,
                format!("between 1 and {MAX_ITEMS}"),
            ));
        }
        let hex = &self.catalogue_sha256;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidField::new(
                "schema.ratings.catalogue_sha256",
                hex,
                "64 hexadecimal digits (the output of `sha256sum` on the catalogue file)",
            ));
        }
        Ok(())
    }

    /// The catalogue file for ratings read from `data`: the catalogue path itself when
    /// absolute, otherwise beside `data`.
    pub fn catalogue_path(&self, data: &Path) -> PathBuf {
        let c = Path::new(&self.catalogue);
        if c.is_absolute() {
            return c.to_owned();
        }
        data.parent().unwrap_or(Path::new(".")).join(c)
    }

    /// Whether `r` is on the scale.
    pub fn admits(&self, r: f64) -> bool {
        r.is_finite() && r >= self.scale[0] && r <= self.scale[1]
    }

    /// `r` clipped to the scale.
    pub fn clip(&self, r: f64) -> f64 {
        r.clamp(self.scale[0], self.scale[1])
    }
}

/// Why a catalogue or a ratings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RatingsError {
    /// A read, syntax or header problem, as for any data file.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A user or item id that is not an integer.
    #[error("{at}: {value:?} is not an integer id")]
    NotInteger {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
    },
    /// A rating outside the task's scale.
    #[error(
        "{at}: rating {value:?} is outside the scale [{lo}, {hi}] the task declares in [schema.ratings]"
    )]
    OutsideScale {
        /// Where.
        at: Box<CellAt>,
        /// The cell.
        value: String,
        /// Lowest rating.
        lo: f64,
        /// Highest rating.
        hi: f64,
    },
    /// The catalogue is not the one the task pins, or is malformed.
    #[error("item catalogue {file}: {problem}")]
    Catalogue {
        /// The file.
        file: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A ratings file without ratings.
    #[error("{file} holds no ratings")]
    NoRatings {
        /// The file.
        file: String,
    },
}

/// The public item catalogue: item ids in parameter order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    ids: Vec<i64>,
    index: HashMap<i64, u32>,
}

impl Catalogue {
    /// Reads the catalogue `spec` names for ratings at `data`, and checks it is the
    /// pinned one: its SHA-256 and item count, integer ids each listed once.
    pub fn load(spec: &RatingsSpec, data: &Path) -> Result<Self, RatingsError> {
        let path = spec.catalogue_path(data);
        let file = path.display().to_string();
        let bytes = std::fs::File::open(&path)
            .and_then(|f| {
                let mut bytes = Vec::new();
                f.take(MAX_CATALOGUE_BYTES + 1).read_to_end(&mut bytes)?;
                Ok(bytes)
            })
            .map_err(|error| DataError::Read {
                file: file.clone(),
                error,
            })?;
        let bad = |problem: String| RatingsError::Catalogue {
            file: file.clone(),
            problem,
        };
        if bytes.len() as u64 > MAX_CATALOGUE_BYTES {
            return Err(bad(format!("larger than {MAX_CATALOGUE_BYTES} bytes")));
        }
        let digest = hex_digest(&bytes);
        if !digest.eq_ignore_ascii_case(&spec.catalogue_sha256) {
            return Err(bad(format!(
                "its SHA-256 is {digest}, the task pins {}: every partner needs the task's \
                 catalogue file (the order of its items is the model's layout)",
                spec.catalogue_sha256
            )));
        }
        let mut header: Option<usize> = None;
        let mut ids = Vec::new();
        let mut index = HashMap::new();
        let mut error: Option<RatingsError> = None;
        let mut row = 0usize;
        let read = csv::read(bytes.as_slice(), |record| {
            if error.is_some() {
                return;
            }
            let Some(col) = header else {
                match record
                    .fields()
                    .position(|h| h.trim() == spec.catalogue_column)
                {
                    Some(c) => header = Some(c),
                    None => {
                        error = Some(
                            DataError::MissingColumn {
                                file: file.clone(),
                                column: spec.catalogue_column.clone(),
                                role: "catalogue's item column",
                                header: record.fields().map(str::to_owned).collect(),
                            }
                            .into(),
                        )
                    }
                }
                return;
            };
            row += 1;
            let cell = record.field(col).trim();
            let at = || {
                Box::new(CellAt {
                    file: file.clone(),
                    line: record.line,
                    row,
                    column: spec.catalogue_column.clone(),
                })
            };
            let Ok(id) = cell.parse::<i64>() else {
                error = Some(RatingsError::NotInteger {
                    at: at(),
                    value: cell.to_owned(),
                });
                return;
            };
            if ids.len() >= MAX_ITEMS || index.insert(id, ids.len() as u32).is_some() {
                error = Some(RatingsError::Catalogue {
                    file: file.clone(),
                    problem: format!("{}: item {id} is listed twice", at()),
                });
                return;
            }
            ids.push(id);
        });
        read_result(read, &file)?;
        if let Some(e) = error {
            return Err(e);
        }
        if ids.len() != spec.items {
            return Err(bad(format!(
                "{} items, the task declares items = {}",
                ids.len(),
                spec.items
            )));
        }
        Ok(Self { ids, index })
    }

    /// Items in the catalogue.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of item `index`.
    pub fn id(&self, index: u32) -> Option<i64> {
        self.ids.get(index as usize).copied()
    }

    /// The index of item `id`.
    pub fn index_of(&self, id: i64) -> Option<u32> {
        self.index.get(&id).copied()
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_result(read: Result<(), csv::ReadError>, file: &str) -> Result<(), RatingsError> {
    match read {
        Ok(()) => Ok(()),
        Err(csv::ReadError::Io(error)) => Err(DataError::Read {
            file: file.to_owned(),
            error,
        }
        .into()),
        Err(csv::ReadError::Syntax(s)) => Err(DataError::Syntax {
            file: file.to_owned(),
            line: s.line,
            problem: s.message,
        }
        .into()),
    }
}

/// One rating: a user (index into [`Ratings::users`]), an item (catalogue index) and
/// the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rating {
    /// Index of the user in [`Ratings::users`].
    pub user: u32,
    /// Catalogue index of the item.
    pub item: u32,
    /// The rating.
    pub value: f64,
}

/// A partner's ratings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratings {
    /// The distinct user ids, in the order first seen.
    pub users: Vec<i64>,
    /// The ratings, in file order.
    pub rows: Vec<Rating>,
    /// Ratings of items not in the catalogue (not in `rows`).
    pub unknown_items: u64,
}

impl Ratings {
    /// Reads a partner's ratings CSV for `task` (which must declare `[schema.ratings]`)
    /// against `catalogue`, a chunk at a time. Refused, naming the file, row and column:
    /// a user or item id that is not an integer, a rating that is not a number or is
    /// off the scale. Ratings of items outside the catalogue are counted, not kept.
    pub fn load(path: &Path, task: &TaskSpec, catalogue: &Catalogue) -> Result<Self, RatingsError> {
        let file = path.display().to_string();
        let input = std::fs::File::open(path).map_err(|error| DataError::Read {
            file: file.clone(),
            error,
        })?;
        Self::from_reader(input, &file, task, catalogue)
    }

    /// [`Ratings::load`] from any reader; `file` names it in errors.
    pub fn from_reader(
        input: impl Read,
        file: &str,
        task: &TaskSpec,
        catalogue: &Catalogue,
    ) -> Result<Self, RatingsError> {
        let spec = task.schema.ratings.as_ref().ok_or_else(|| {
            RatingsError::Data(DataError::Shape(format!(
                "task `{}` declares no [schema.ratings]",
                task.name
            )))
        })?;
        let label = task.schema.label.column.as_str();
        let mut cols: Option<[usize; 3]> = None;
        let mut width = 0usize;
        let mut out = Ratings {
            users: Vec::new(),
            rows: Vec::new(),
            unknown_items: 0,
        };
        let mut user_index: HashMap<i64, u32> = HashMap::new();
        let mut error: Option<RatingsError> = None;
        let mut row = 0usize;
        let read = csv::read(input, |record| {
            if error.is_some() {
                return;
            }
            let Some([u, i, r]) = cols else {
                let header: Vec<String> = record.fields().map(|h| h.trim().to_owned()).collect();
                let find = |column: &str, role: &'static str| {
                    header.iter().position(|h| h == column).ok_or_else(|| {
                        DataError::MissingColumn {
                            file: file.to_owned(),
                            column: column.to_owned(),
                            role,
                            header: header.clone(),
                        }
                    })
                };
                match (|| -> Result<[usize; 3], DataError> {
                    Ok([
                        find(&spec.user, "user column")?,
                        find(&spec.item, "item column")?,
                        find(label, "rating (label) column")?,
                    ])
                })() {
                    Ok(c) => {
                        cols = Some(c);
                        width = header.len();
                    }
                    Err(e) => error = Some(e.into()),
                }
                return;
            };
            row += 1;
            if record.len() != width {
                error = Some(
                    DataError::FieldCount {
                        file: file.to_owned(),
                        line: record.line,
                        row,
                        found: record.len(),
                        expected: width,
                    }
                    .into(),
                );
                return;
            }
            let at = |column: &str| {
                Box::new(CellAt {
                    file: file.to_owned(),
                    line: record.line,
                    row,
                    column: column.to_owned(),
                })
            };
            let id = |i: usize, column: &str| {
                let cell = record.field(i).trim();
                cell.parse::<i64>().map_err(|_| RatingsError::NotInteger {
                    at: at(column),
                    value: cell.to_owned(),
                })
            };
            let parsed = (|| {
                let user = id(u, &spec.user)?;
                let item = id(i, &spec.item)?;
                let cell = record.field(r).trim();
                let value = match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => v,
                    _ => {
                        return Err(RatingsError::Data(DataError::NotNumeric {
                            at: at(label),
                            value: cell.to_owned(),
                        }));
                    }
                };
                if !spec.admits(value) {
                    return Err(RatingsError::OutsideScale {
                        at: at(label),
                        value: cell.to_owned(),
                        lo: spec.scale[0],
                        hi: spec.scale[1],
                    });
                }
                Ok((user, item, value))
            })();
            match parsed {
                Err(e) => error = Some(e),
                Ok((user, item, value)) => match catalogue.index_of(item) {
                    None => out.unknown_items += 1,
                    Some(item) => {
                        let next = out.users.len() as u32;
                        let user = *user_index.entry(user).or_insert_with(|| {
                            out.users.push(user);
                            next
                        });
                        out.rows.push(Rating { user, item, value });
                    }
                },
            }
        });
        read_result(read, file)?;
        if let Some(e) = error {
            return Err(e);
        }
        if cols.is_none() {
            return Err(DataError::Empty {
                file: file.to_owned(),
            }
            .into());
        }
        if out.rows.is_empty() {
            return Err(RatingsError::NoRatings {
                file: file.to_owned(),
            });
        }
        Ok(out)
    }

    /// Splits off `fraction` of each user's ratings for evaluation: a user with `n`
    /// ratings keeps `floor((1 − fraction) · n)` for training, chosen by a shuffle
    /// seeded by `seed` and the user's id alone, so the split of a user's ratings does
    /// not depend on which partner holds the user or on the other users.
    pub fn split_per_user(&self, fraction: f64, seed: u64) -> (Ratings, Ratings) {
        let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); self.users.len()];
        for (i, r) in self.rows.iter().enumerate() {
            by_user[r.user as usize].push(i);
        }
        let mut held = vec![false; self.rows.len()];
        for (u, rows) in by_user.iter_mut().enumerate() {
            let mix = (self.users[u] as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ mix);
            rows.shuffle(&mut rng);
            let keep = ((1.0 - fraction) * rows.len() as f64).floor() as usize;
            for &i in &rows[keep.min(rows.len())..] {
                held[i] = true;
            }
        }
        let part = |test: bool| Ratings {
            users: self.users.clone(),
            rows: self
                .rows
                .iter()
                .zip(&held)
                .filter(|(_, h)| **h == test)
                .map(|(r, _)| *r)
                .collect(),
            unknown_items: 0,
        };
        (part(false), part(true))
    }

    /// The ratings grouped by user.
    pub fn by_user(&self) -> ByUser {
        group(
            self.users.len(),
            self.rows.iter().map(|r| (r.user, r.item, r.value)),
        )
    }

    /// The ratings grouped by item, over `items` catalogue items (the "user" of each
    /// entry is the rating's user).
    pub fn by_item(&self, items: usize) -> ByUser {
        group(items, self.rows.iter().map(|r| (r.item, r.user, r.value)))
    }
}

/// Ratings grouped by a key (compressed rows): entry `k`'s other ends and values are
/// `others[start[k]..start[k + 1]]` and `values[..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ByUser {
    /// Offsets, one more than keys.
    pub start: Vec<usize>,
    /// The other end of each rating (the item for a user, the user for an item).
    pub others: Vec<u32>,
    /// The ratings.
    pub values: Vec<f64>,
}

impl ByUser {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key `k`'s other ends and ratings.
    pub fn of(&self, k: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.start[k], self.start[k + 1]);
        (&self.others[a..b], &self.values[a..b])
    }
}

fn group(keys: usize, rows: impl Iterator<Item = (u32, u32, f64)> + Clone) -> ByUser {
    let mut start = vec![0usize; keys + 1];
    for (k, _, _) in rows.clone() {
        start[k as usize + 1] += 1;
    }
    for k in 0..keys {
        start[k + 1] += start[k];
    }
    let n = start[keys];
    let mut fill = start.clone();
    let mut others = vec![0u32; n];
    let mut values = vec![0.0; n];
    for (k, o, v) in rows {
        let at = &mut fill[k as usize];
        others[*at] = o;
        values[*at] = v;
        *at += 1;
    }
    ByUser {
        start,
        others,
        values,
    }
}

/// Splits a ratings CSV into `parts` files by `user id mod parts` (`users-0.csv`, …,
/// in `out_dir`), copying each row whole; returns each part's partner name
/// (`users-<r>`), path and row count. The demo and the tests split MovieLens this way.
pub fn partition_by_user(
    input: &Path,
    user_column: &str,
    parts: u32,
    out_dir: &Path,
) -> Result<Vec<(String, PathBuf, usize)>, RatingsError> {
    let file = input.display().to_string();
    let text = std::fs::read_to_string(input).map_err(|error| DataError::Read {
        file: file.clone(),
        error,
    })?;
    let records = csv::parse(&text).map_err(|s| DataError::Syntax {
        file: file.clone(),
        line: s.line,
        problem: s.message,
    })?;
    let Some((header, rows)) = records.split_first() else {
        return Err(DataError::Empty { file }.into());
    };
    let col = header
        .fields
        .iter()
        .position(|h| h.trim() == user_column)
        .ok_or_else(|| DataError::MissingColumn {
            file: file.clone(),
            column: user_column.to_owned(),
            role: "user column",
            header: header.fields.clone(),
        })?;
    let parts = parts.max(1);
    let mut outs: Vec<(String, usize)> = (0..parts).map(|_| (String::new(), 0)).collect();
    for (text, _) in &mut outs {
        csv::write_record(text, &header.fields);
    }
    for (i, rec) in rows.iter().enumerate() {
        let cell = rec.fields.get(col).map_or("", |c| c.trim());
        let id: i64 = cell.parse().map_err(|_| RatingsError::NotInteger {
            at: Box::new(CellAt {
                file: file.clone(),
                line: rec.line,
                row: i + 1,
                column: user_column.to_owned(),
            }),
            value: cell.to_owned(),
        })?;
        let (text, n) = &mut outs[id.rem_euclid(i64::from(parts)) as usize];
        csv::write_record(text, &rec.fields);
        *n += 1;
    }
    let mut result = Vec::new();
    for (r, (text, n)) in outs.into_iter().enumerate() {
        let path = out_dir.join(format!("users-{r}.csv"));
        std::fs::write(&path, text).map_err(|error| DataError::Write {
            file: path.display().to_string(),
            error,
        })?;
        result.push((format!("users-{r}"), path, n));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = include_str!("../../examples/recommend_mf.toml");

    fn ratings(rows: &[(i64, u32, f64)]) -> Ratings {
        let mut users: Vec<i64> = Vec::new();
        let rows = rows
            .iter()
            .map(|&(id, item, value)| {
                let user = users.iter().position(|u| *u == id).unwrap_or_else(|| {
                    users.push(id);
                    users.len() - 1
                }) as u32;
                Rating { user, item, value }
            })
            .collect();
        Ratings {
            users,
            rows,
            unknown_items: 0,
        }
    }

    #[test]
    fn a_users_holdout_depends_on_the_seed_and_the_user_alone() {
        let alone: Vec<(i64, u32, f64)> = (0..10).map(|i| (7, i, 3.0)).collect();
        let mut mixed: Vec<(i64, u32, f64)> = (0..6).map(|i| (3, i, 4.0)).collect();
        mixed.extend(&alone);
        let held = |r: &Ratings| -> Vec<u32> {
            let (_, test) = r.split_per_user(0.2, 42);
            test.rows
                .iter()
                .filter(|x| test.users[x.user as usize] == 7)
                .map(|x| x.item)
                .collect()
        };
        let a = held(&ratings(&alone));
        assert_eq!(a.len(), 2, "10 − floor(0.8 · 10)");
        assert_eq!(a, held(&ratings(&mixed)));
        let (train, test) = ratings(&mixed).split_per_user(0.2, 42);
        assert_eq!(train.rows.len() + test.rows.len(), 16);
        assert_eq!(test.rows.iter().filter(|r| r.user == 0).count(), 2);
    }

    #[test]
    fn the_task_pairs_factors_and_ratings_with_the_matrix_factorisation_only() {
        let task = TaskSpec::from_toml_str(TASK).unwrap();
        assert_eq!(task.param_count(), 1 + 9066 * 11);
        assert_eq!(task.evaluation_kind(), "recommendation");
        assert!(!task.is_classifier());
        let bad = |from: &str, to: &str| {
            TaskSpec::from_toml_str(&TASK.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("factors = 10", "factors = 0").contains("model.factors"));
        assert!(bad("factors = 10\n", "").contains("model.factors"));
        assert!(bad("scale = [0.5, 5.0]", "scale = [5.0, 0.5]").contains("schema.ratings.scale"));
        assert!(bad("items = 9066", "items = 0").contains("schema.ratings.items"));
        assert!(
            bad("catalogue_sha256 = \"cd", "catalogue_sha256 = \"zz").contains("catalogue_sha256")
        );
        assert!(bad("user = \"userId\"", "user = \"rating\"").contains("schema.ratings"));
        let other = bad(
            "kind = \"matrix_factorization\"",
            "kind = \"glm\"\nfamily = \"gaussian\"",
        );
        assert!(other.contains("factors"), "{other}");
        let spec = task.schema.ratings.as_ref().unwrap();
        assert_eq!(
            spec.catalogue_path(Path::new("/data/partner/users-0.csv")),
            Path::new("/data/partner/movielens_movies.csv")
        );
        assert!(
            spec.admits(0.5) && spec.admits(5.0) && !spec.admits(5.5) && !spec.admits(f64::NAN)
        );
    }
}
