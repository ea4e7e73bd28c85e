//! The feature schema: which CSV columns are the label and the features, and how
//! each becomes numbers.
//!
//! The design matrix has one column per numeric feature, in the order listed, then
//! one one-hot column per category of each categorical feature, in the order listed.
//! The category lists are fixed by the task file so that every partner encodes the
//! same value into the same column; a value outside the list is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest number of encoded features a schema may describe. It bounds the
/// memory a task file can make a partner allocate.
pub const MAX_FEATURES: usize = 100_000;

/// Which columns are the label and the features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSchema {
    /// The label column and its positive value.
    pub label: LabelSpec,
    /// Numeric feature columns, one design-matrix column each.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Numeric columns encoded as `ln(1 + x)` instead of `x` (`log1p = ["spend", ...]`):
    /// for skewed amounts and counts such as spend or order counts. Each must be listed in
    /// `numeric`; a value of −1 or below is an error naming the file, row and column. Left
    /// out of the canonical form when empty, so tasks written before it hash as they did.
    /// Their `[schema.bounds]` are in the column's raw units ([`feature_bounds`](Self::feature_bounds)
    /// transforms them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log1p: Vec<String>,
    /// Categorical feature columns, one-hot encoded over a fixed category list.
    #[serde(default)]
    pub categorical: Vec<CategoricalSpec>,
    /// What to do with an empty cell in a numeric column, by column name. Columns
    /// not named here treat an empty cell as an error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing: BTreeMap<String, MissingPolicy>,
    /// Public bounds `[lo, hi]` of numeric columns, by column name (`[schema.bounds]`):
    /// domain knowledge that does not depend on any partner's rows. Under `[privacy]` every
    /// numeric column needs bounds: feature statistics are computed from values clipped to
    /// them ([`feature_bounds`](Self::feature_bounds)). The bounds of a `log1p` column are
    /// in its raw units (before the transform), with `lo > −1`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bounds: BTreeMap<String, [f64; 2]>,
    /// A recommendation task's ratings (`[schema.ratings]`: user and item columns, the
    /// rating scale, the item catalogue), whose rating is the label column; such a
    /// schema has no feature columns. Absent, and left out of the canonical form, for
    /// every other task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratings: Option<crate::ratings::RatingsSpec>,
}

/// The label column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// Column holding the label.
    pub column: String,
    /// The value that means "positive" (encoded as 1): a classifier's label. Absent
    /// for a regression model (`kind = "glm"`), whose label column holds numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive: Option<String>,
    /// The value that means "negative" (encoded as 0). When absent, any single
    /// value other than `positive` is accepted as the negative one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative: Option<String>,
}

/// A categorical column and its fixed list of categories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalSpec {
    /// Column holding the category.
    pub column: String,
    /// The categories, one one-hot feature each, in this order.
    pub categories: Vec<String>,
}

/// Policy for an empty cell in a numeric column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// An empty cell is an error (the default for every column).
    Error,
    /// An empty cell reads as 0.
    Zero,
}

/// A field of a task file or schema that holds a value it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// Dotted path of the field, such as `schema.numeric[2]`.
    pub field: String,
    /// The offending value, as written.
    pub value: String,
    /// What the value must be instead.
    pub expected: String,
}

impl InvalidField {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl fmt::Debug,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: shorten(format!("{value:?}")),
            expected: expected.into(),
        }
    }
}

/// The most characters of an offending value an error repeats.
pub const MAX_SHOWN_VALUE: usize = 80;

/// `value`, cut to [`MAX_SHOWN_VALUE`] characters with its full length noted, so that
/// a huge value (a 100 kB task name) is not echoed whole into logs and errors.
fn shorten(value: String) -> String {
    let chars = value.chars().count();
    if chars <= MAX_SHOWN_VALUE {
        return value;
    }
    let head: String = value.chars().take(MAX_SHOWN_VALUE).collect();
    format!("{head}… ({chars} characters in all)")
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is {}, but it must be {}",
            self.field, self.value, self.expected
        )
    }
}

impl std::error::Error for InvalidField {}

impl FeatureSchema {
    /// Checks that column names are non-empty and distinct, that category lists are
    /// non-empty without duplicates, that `missing` names numeric columns only, and
    /// that there is at least one and at most [`MAX_FEATURES`] features.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let mut seen = BTreeSet::new();
        let mut claim = |field: String, column: &str| -> Result<(), InvalidField> {
            if column.trim().is_empty() {
                return Err(InvalidField::new(field, column, "a non-empty column name"));
            }
            if !seen.insert(column.to_owned()) {
                return Err(InvalidField::new(
                    field,
                    column,
                    "a column not already used as the label or another feature",
                ));
            }
            Ok(())
        };
        claim("schema.label.column".into(), &self.label.column)?;
        for (i, column) in self.numeric.iter().enumerate() {
            claim(format!("schema.numeric[{i}]"), column)?;
        }
        for (i, cat) in self.categorical.iter().enumerate() {
            claim(format!("schema.categorical[{i}].column"), &cat.column)?;
        }

        if let Some(positive) = &self.label.positive
            && positive.trim().is_empty()
        {
            return Err(InvalidField::new(
                "schema.label.positive",
                positive,
                "a non-empty label value",
            ));
        }
        if let Some(negative) = &self.label.negative
            && (negative.trim().is_empty()
                || Some(negative) == self.label.positive.as_ref()
                || self.label.positive.is_none())
        {
            return Err(InvalidField::new(
                "schema.label.negative",
                negative,
                "a non-empty label value different from `schema.label.positive` (and only with it)",
            ));
        }

        for (i, cat) in self.categorical.iter().enumerate() {
            if cat.categories.is_empty() {
                return Err(InvalidField::new(
                    format!("schema.categorical[{i}].categories"),
                    &cat.categories,
                    "a non-empty list of categories",
                ));
            }
            let mut distinct = BTreeSet::new();
            for (j, category) in cat.categories.iter().enumerate() {
                if category.trim().is_empty() || !distinct.insert(category.as_str()) {
                    return Err(InvalidField::new(
                        format!("schema.categorical[{i}].categories[{j}]"),
                        category,
                        "a non-empty category not listed earlier for this column",
                    ));
                }
            }
        }

        for column in self.missing.keys() {
            if !self.numeric.contains(column) {
                return Err(InvalidField::new(
                    format!("schema.missing.{column}"),
                    column,
                    "the name of a column listed in `schema.numeric`",
                ));
            }
        }

        let mut logged = BTreeSet::new();
        for (i, column) in self.log1p.iter().enumerate() {
            if !self.numeric.contains(column) {
                return Err(InvalidField::new(
                    format!("schema.log1p[{i}]"),
                    column,
                    "the name of a column listed in `schema.numeric`",
                ));
            }
            if !logged.insert(column.as_str()) {
                return Err(InvalidField::new(
                    format!("schema.log1p[{i}]"),
                    column,
                    "a column not already listed in `schema.log1p`",
                ));
            }
        }

        for (column, &[lo, hi]) in &self.bounds {
            if !self.numeric.contains(column) {
                return Err(InvalidField::new(
                    format!("schema.bounds.{column}"),
                    column,
                    "the name of a column listed in `schema.numeric`",
                ));
            }
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(InvalidField::new(
                    format!("schema.bounds.{column}"),
                    [lo, hi],
                    "[lo, hi] with finite lo < hi",
                ));
            }
            if self.is_log1p(column) && lo <= -1.0 {
                return Err(InvalidField::new(
                    format!("schema.bounds.{column}"),
                    [lo, hi],
                    "[lo, hi] with lo > -1: the column is in `schema.log1p`, and ln(1 + x) is \
                     defined for x > -1 only (bounds are in the column's raw units)",
                ));
            }
        }

        if let Some(ratings) = &self.ratings {
            ratings.validate(&self.label.column)?;
            if !self.numeric.is_empty() || !self.categorical.is_empty() {
                return Err(InvalidField::new(
                    "schema",
                    self.feature_names(),
                    "no numeric or categorical columns with [schema.ratings]: a matrix \
                     factorisation learns from the user, item and rating columns alone",
                ));
            }
            if self.label.positive.is_some() {
                return Err(InvalidField::new(
                    "schema.label.positive",
                    &self.label.positive,
                    "absent with [schema.ratings]: the label column holds the rating",
                ));
            }
            return Ok(());
        }
        let count = self
            .categorical
            .iter()
            .try_fold(self.numeric.len(), |acc, c| {
                acc.checked_add(c.categories.len())
            });
        match count {
            Some(n) if (1..=MAX_FEATURES).contains(&n) => Ok(()),
            _ => Err(InvalidField::new(
                "schema",
                count.unwrap_or(usize::MAX),
                format!("a schema with between 1 and {MAX_FEATURES} encoded features"),
            )),
        }
    }

    /// Number of encoded features: numeric columns plus every category of every
    /// categorical column.
    pub fn feature_count(&self) -> usize {
        self.numeric.len()
            + self
                .categorical
                .iter()
                .map(|c| c.categories.len())
                .sum::<usize>()
    }

    /// Names of the encoded features in design-matrix order: each numeric column's
    /// name, then `column=category` for each one-hot feature.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = self.numeric.clone();
        for cat in &self.categorical {
            names.extend(
                cat.categories
                    .iter()
                    .map(|category| format!("{}={category}", cat.column)),
            );
        }
        names
    }

    /// Public bounds of every encoded feature in design-matrix order: each numeric column's
    /// `[schema.bounds]` entry, then [0, 1] for each one-hot feature (true by construction).
    /// A `log1p` column's bounds are written in its raw units and returned transformed,
    /// `[ln(1 + lo), ln(1 + hi)]`, the range of its encoded feature (the transform is
    /// increasing, so clipping the encoded value to them is clipping the raw value to the
    /// written bounds). Err names the first numeric column without bounds.
    pub fn feature_bounds(&self) -> Result<Vec<(f64, f64)>, String> {
        let mut out = Vec::with_capacity(self.feature_count());
        for column in &self.numeric {
            let &[lo, hi] = self.bounds.get(column).ok_or_else(|| column.clone())?;
            if self.is_log1p(column) {
                out.push((lo.ln_1p(), hi.ln_1p()));
            } else {
                out.push((lo, hi));
            }
        }
        for cat in &self.categorical {
            out.extend(std::iter::repeat_n((0.0, 1.0), cat.categories.len()));
        }
        Ok(out)
    }

    /// Whether numeric column `column` is encoded as `ln(1 + x)` (listed in `log1p`).
    pub fn is_log1p(&self, column: &str) -> bool {
        self.log1p.iter().any(|c| c == column)
    }

    /// The policy for empty cells in numeric column `column`.
    pub fn missing_policy(&self, column: &str) -> MissingPolicy {
        self.missing
            .get(column)
            .copied()
            .unwrap_or(MissingPolicy::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FeatureSchema {
        FeatureSchema {
            label: LabelSpec {
                column: "y".into(),
                positive: Some("Yes".into()),
                negative: None,
            },
            numeric: vec!["a".into(), "b".into()],
            categorical: vec![CategoricalSpec {
                column: "c".into(),
                categories: vec!["x".into(), "y".into(), "z".into()],
            }],
            log1p: Vec::new(),
            missing: BTreeMap::new(),
            bounds: BTreeMap::new(),
            ratings: None,
        }
    }

    #[test]
    fn counts_and_names() {
        let s = schema();
        s.validate().unwrap();
        assert_eq!(s.feature_count(), 5);
        assert_eq!(s.feature_names(), ["a", "b", "c=x", "c=y", "c=z"]);
    }

    #[test]
    fn rejects_duplicate_columns_and_categories() {
        let mut s = schema();
        s.numeric.push("c".into());
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "schema.categorical[0].column");

        let mut s = schema();
        s.numeric[1] = "y".into();
        assert_eq!(s.validate().unwrap_err().field, "schema.numeric[1]");

        let mut s = schema();
        s.categorical[0].categories[2] = "x".into();
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "schema.categorical[0].categories[2]");
        assert_eq!(err.value, "\"x\"");
    }

    #[test]
    fn rejects_bad_label_missing_and_empty_schemas() {
        let mut s = schema();
        s.label.negative = Some("Yes".into());
        assert_eq!(s.validate().unwrap_err().field, "schema.label.negative");

        let mut s = schema();
        s.missing.insert("c".into(), MissingPolicy::Zero);
        assert_eq!(s.validate().unwrap_err().field, "schema.missing.c");

        let mut s = schema();
        s.numeric.clear();
        s.categorical.clear();
        assert_eq!(s.validate().unwrap_err().field, "schema");

        let mut s = schema();
        s.categorical[0].categories.clear();
        assert_eq!(
            s.validate().unwrap_err().field,
            "schema.categorical[0].categories"
        );
    }

    #[test]
    fn log1p_names_numeric_columns_once_and_transforms_their_bounds() {
        let mut s = schema();
        s.log1p = vec!["b".into()];
        s.bounds.insert("a".into(), [-5.0, 5.0]);
        s.bounds.insert("b".into(), [0.0, 99.0]);
        s.validate().unwrap();
        assert!(s.is_log1p("b") && !s.is_log1p("a"));
        let bounds = s.feature_bounds().unwrap();
        assert_eq!(bounds[0], (-5.0, 5.0));
        assert_eq!(bounds[1], (0.0, 100f64.ln()));
        assert_eq!(bounds[2..], [(0.0, 1.0); 3]);

        // Only numeric columns, each once.
        let mut bad = s.clone();
        bad.log1p.push("c".into());
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, "schema.log1p[1]");
        assert!(err.expected.contains("schema.numeric"), "{err}");
        let mut bad = s.clone();
        bad.log1p = vec!["nope".into()];
        assert_eq!(bad.validate().unwrap_err().field, "schema.log1p[0]");
        let mut bad = s.clone();
        bad.log1p.push("b".into());
        assert_eq!(bad.validate().unwrap_err().field, "schema.log1p[1]");

        // Raw-unit bounds of a log1p column must lie in its domain.
        let mut bad = s.clone();
        bad.bounds.insert("b".into(), [-1.0, 10.0]);
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, "schema.bounds.b");
        assert!(err.expected.contains("lo > -1"), "{err}");
        // Column `a` is not transformed, so a bound below −1 is fine there.
        assert!(s.validate().is_ok());
    }
}
