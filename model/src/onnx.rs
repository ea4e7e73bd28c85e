//! ONNX export of a trained model, so that a partner can score customers with any
//! ONNX runtime (onnxruntime, tract, …) instead of `consortia score`.
//!
//! [`to_onnx`] writes one ONNX model (protobuf, [`IR_VERSION`] 7, default-domain
//! operator set [`OPSET`] 13) for logistic regression, the MLP and the GLM; any other
//! kind is refused with [`OnnxError::Unsupported`], naming it, rather than written as
//! a file that would score wrongly.
//!
//! # The graph
//!
//! Every tensor is `DOUBLE` (f64), so the file scores like the Rust model to rounding
//! (a few ulps), not to float32's seven digits.
//!
//! - **Input** [`INPUT`] (`features`), `DOUBLE [N, d]`: the *encoded* feature rows
//!   before standardisation — the task schema's numeric columns (with its `log1p`
//!   columns as `ln(1 + x)` and its missing-value policy applied), then its one-hot
//!   categoricals, in [`crate::FeatureSchema::feature_names`] order; exactly the
//!   matrix [`crate::Dataset::load_for_scoring`] returns. The names are also in the
//!   file's `features` metadata entry (a JSON array).
//! - **Standardisation, in the graph**: `Mul(Sub(features, mean), inv_std)` with the
//!   federation's means and `inv_std = 1 / std`, computed as
//!   [`Standardizer::apply_features`] does, so the consumer feeds unstandardised
//!   encoded features.
//! - **Model**: each affine layer is `Add(MatMul(h, W), b)` with `W` stored
//!   `[fan_in, fan_out]`. Logistic regression: one layer then a sigmoid; MLP: `Relu`
//!   after each hidden layer, then the output layer and a sigmoid; GLM: the linear
//!   predictor `η`, then `Exp(Clip(η, −50, 50))` for a log link (the clamp of
//!   [`crate::models::glm::ETA_LIMIT`]) or `η` itself for the Gaussian identity link.
//!   The sigmoid is written `Reciprocal(Add(Exp(Neg(z)), 1))` rather than the
//!   `Sigmoid` operator, because runtimes such as tract implement `Sigmoid` for
//!   float32 only; the two agree to rounding and the expansion saturates to exactly
//!   0 or 1 without NaN.
//! - **Output** [`OUTPUT`] (`score`), `DOUBLE [N]`: `P(y = 1)` for the classifiers,
//!   the predicted mean for the GLM — the `score` column `consortia score` writes.
//!
//! # Wire format
//!
//! The messages below are the subset of `onnx/onnx.proto` (ONNX 1.8, IR version 7)
//! this writer needs, with that file's field numbers: `ModelProto`, `GraphProto`,
//! `NodeProto`, `TensorProto`, `ValueInfoProto`, `TypeProto` (`Tensor`),
//! `TensorShapeProto` (`Dimension`), `OperatorSetIdProto` and
//! `StringStringEntryProto`. No operator takes an attribute, so `AttributeProto` is
//! not needed; initialisers carry their values in `double_data` / `int64_data`.

use crate::model::ModelError;
use crate::models::mlp::MlpModel;
use crate::standardize::Standardizer;
use crate::task::{GlmFamily, ModelKind, TaskSpec};

/// The ONNX IR version written (7: ONNX 1.8, the first with operator set 13).
pub const IR_VERSION: i64 = 7;

/// The default-domain (`ai.onnx`) operator set the graph uses.
pub const OPSET: i64 = 13;

/// Name of the graph's input: encoded, unstandardised features, `DOUBLE [N, d]`.
pub const INPUT: &str = "features";

/// Name of the graph's output: one score per row, `DOUBLE [N]`.
pub const OUTPUT: &str = "score";

/// `TensorProto.DataType.DOUBLE`.
const DOUBLE: i32 = 11;
/// `TensorProto.DataType.INT64`.
const INT64: i32 = 7;

/// Why a model could not be written as ONNX.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// A model family the writer has no graph for.
    #[error(
        "ONNX export does not support `{kind}` models (only logistic_regression, mlp and glm); \
         score this model with `consortia score` and the exported JSON"
    )]
    Unsupported {
        /// The kind, as the task file names it.
        kind: String,
    },
    /// The parameters do not fit the task's model.
    #[error("the model's parameters: {0}")]
    Model(#[from] ModelError),
    /// The standardisation does not have one mean and deviation per feature.
    #[error(
        "the standardisation has {found} features, the task's model {expected}: \
         the export does not belong to this task"
    )]
    Standardization {
        /// Features in the standardisation.
        found: usize,
        /// Features of the model.
        expected: usize,
    },
    /// The model is too large for one ONNX file.
    #[error("the model does not fit in one ONNX file: {0}")]
    TooLarge(String),
}

/// The task's model with the shared parameters `params`, with the federation's
/// standardisation in front, as the bytes of an ONNX model (see the module
/// documentation for the graph). `metadata` goes into the model's
/// `metadata_props` after the entries this function writes itself (`kind`,
/// `features`, `input`, `output`, and `family` for a GLM).
pub fn to_onnx(
    task: &TaskSpec,
    params: &[f64],
    standardizer: &Standardizer,
    metadata: &[(String, String)],
) -> Result<Vec<u8>, OnnxError> {
    use prost::Message;

    check_supported(task.model.kind)?;
    let model = crate::model::model_with_params(task, params)?;
    let kind = model.kind();
    let d = model.feature_count();
    if standardizer.feature_count() != d {
        return Err(OnnxError::Standardization {
            found: standardizer.feature_count(),
            expected: d,
        });
    }
    let mut g = GraphBuilder::default();
    let standardized = g.standardize(standardizer);
    let mut props = vec![("kind".to_owned(), kind_name(kind))];
    match kind {
        ModelKind::LogisticRegression => {
            let logit = g.affine(&standardized, params, d, 1, "logit");
            let logit = g.flatten(&logit, "logit_flat");
            g.sigmoid(&logit, OUTPUT);
        }
        ModelKind::Mlp => {
            let mlp = MlpModel::from_params(params, d, &task.model.hidden)?;
            let sizes = mlp.sizes();
            let layers = sizes.len() - 1;
            let mut h = standardized;
            for l in 0..layers {
                // The wire layout stores `fan_out × fan_in`; MatMul wants `[fan_in, fan_out]`.
                let w = mlp.layer_weights(l);
                let mut layer = Vec::with_capacity(w.len() + w.nrows());
                layer.extend(w.t().iter().copied());
                layer.extend_from_slice(mlp.layer_biases(l));
                let z = g.affine(&h, &layer, w.ncols(), w.nrows(), &format!("layer{l}"));
                h = if l + 1 < layers {
                    g.node("Relu", &[&z], &format!("layer{l}_relu"))
                } else {
                    z
                };
            }
            let logit = g.flatten(&h, "logit_flat");
            g.sigmoid(&logit, OUTPUT);
        }
        ModelKind::Glm => {
            let family = task.model.family.ok_or_else(|| {
                ModelError::Config("a glm needs model.family (e.g. \"tweedie\")".into())
            })?;
            props.push(("family".to_owned(), format!("{family:?}").to_lowercase()));
            let eta = g.affine(&standardized, params, d, 1, "eta");
            if family == GlmFamily::Gaussian {
                g.flatten(&eta, OUTPUT);
            } else {
                let eta = g.flatten(&eta, "eta_flat");
                let lo = g.scalar("eta_min", -crate::models::glm::ETA_LIMIT);
                let hi = g.scalar("eta_max", crate::models::glm::ETA_LIMIT);
                let clamped = g.node("Clip", &[&eta, &lo, &hi], "eta_clamped");
                g.node("Exp", &[&clamped], OUTPUT);
            }
        }
        // A family added to `ModelKind` later has no graph here until one is written.
        #[allow(unreachable_patterns)]
        other => {
            return Err(OnnxError::Unsupported {
                kind: kind_name(other),
            });
        }
    }
    let names = task.schema.feature_names();
    props.push((
        "features".to_owned(),
        serde_json::to_string(&names).unwrap_or_default(),
    ));
    props.push((
        "input".to_owned(),
        format!(
            "{INPUT}: DOUBLE [N, {d}], the task schema's encoded features (numeric, log1p \
             applied, then one-hot categoricals) before standardisation, in `features` order"
        ),
    ));
    props.push((
        "output".to_owned(),
        format!(
            "{OUTPUT}: DOUBLE [N], {}",
            if kind == ModelKind::Glm {
                "the predicted mean"
            } else {
                "P(y = 1)"
            }
        ),
    ));
    props.extend(metadata.iter().cloned());

    let graph = proto::GraphProto {
        node: g.nodes,
        name: task.name.clone(),
        initializer: g.initializers,
        doc_string: format!(
            "task `{}`, {} model; standardisation is in the graph",
            task.name,
            kind_name(kind)
        ),
        input: vec![value_info(
            INPUT,
            vec![dim_param("N"), dim_value(d)],
            "encoded features before standardisation",
        )],
        output: vec![value_info(
            OUTPUT,
            vec![dim_param("N")],
            "one score per row",
        )],
    };
    let model = proto::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "consortia".to_owned(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        domain: String::new(),
        model_version: 1,
        doc_string: "A Consortia federated model (consortia model export)".to_owned(),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(key, value)| proto::StringStringEntryProto { key, value })
            .collect(),
    };
    // Protobuf messages are limited to 2 GiB.
    let len = model.encoded_len();
    if len > i32::MAX as usize {
        return Err(OnnxError::TooLarge(format!("{len} bytes")));
    }
    Ok(model.encode_to_vec())
}

/// `Ok` for the model kinds [`to_onnx`] has a graph for (logistic regression, the
/// MLP, the GLM), [`OnnxError::Unsupported`] naming any other.
pub fn check_supported(kind: ModelKind) -> Result<(), OnnxError> {
    match kind {
        ModelKind::LogisticRegression | ModelKind::Mlp | ModelKind::Glm => Ok(()),
        #[allow(unreachable_patterns)]
        other => Err(OnnxError::Unsupported {
            kind: kind_name(other),
        }),
    }
}

/// A model kind as the task file names it (`logistic_regression`, `mlp`, `glm`).
fn kind_name(kind: ModelKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

fn dim_param(name: &str) -> proto::Dimension {
    proto::Dimension {
        value: Some(proto::DimensionValue::DimParam(name.to_owned())),
    }
}

fn dim_value(n: usize) -> proto::Dimension {
    proto::Dimension {
        value: Some(proto::DimensionValue::DimValue(n as i64)),
    }
}

fn value_info(name: &str, dims: Vec<proto::Dimension>, doc: &str) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::TypeValue::TensorType(proto::TensorType {
                elem_type: DOUBLE,
                shape: Some(proto::TensorShapeProto { dim: dims }),
            })),
        }),
        doc_string: doc.to_owned(),
    }
}

/// Nodes and initialisers of the graph being written; every value is named after
/// what it is.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
}

impl GraphBuilder {
    /// A `DOUBLE` initialiser of shape `dims`; returns its name.
    fn constant(&mut self, name: &str, dims: &[usize], values: Vec<f64>) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        self.initializers.push(proto::TensorProto {
            dims: dims.iter().map(|&n| n as i64).collect(),
            data_type: DOUBLE,
            int64_data: Vec::new(),
            name: name.to_owned(),
            double_data: values,
        });
        name.to_owned()
    }

    /// A `DOUBLE` scalar (rank 0) initialiser.
    fn scalar(&mut self, name: &str, value: f64) -> String {
        self.constant(name, &[], vec![value])
    }

    /// One node of the default domain with one output named `output`.
    fn node(&mut self, op: &str, inputs: &[&str], output: &str) -> String {
        self.nodes.push(proto::NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: output.to_owned(),
            op_type: op.to_owned(),
            domain: String::new(),
        });
        output.to_owned()
    }

    /// `(features − mean) · (1 / std)`.
    fn standardize(&mut self, st: &Standardizer) -> String {
        let d = st.feature_count();
        let mean = self.constant("mean", &[d], st.mean().to_vec());
        let inv_std = self.constant("inv_std", &[d], st.std().iter().map(|s| 1.0 / s).collect());
        let centred = self.node("Sub", &[INPUT, &mean], "centred");
        self.node("Mul", &[&centred, &inv_std], "standardized")
    }

    /// `Add(MatMul(x, W), b)` for `layer` = `fan_in × fan_out` weights (row `i`
    /// holding input `i`'s weights into every unit) then `fan_out` biases.
    fn affine(
        &mut self,
        x: &str,
        layer: &[f64],
        fan_in: usize,
        fan_out: usize,
        name: &str,
    ) -> String {
        let (w, b) = layer.split_at(fan_in * fan_out);
        let w = self.constant(&format!("{name}_weights"), &[fan_in, fan_out], w.to_vec());
        let b = self.constant(&format!("{name}_bias"), &[fan_out], b.to_vec());
        let product = self.node("MatMul", &[x, &w], &format!("{name}_matmul"));
        self.node("Add", &[&product, &b], name)
    }

    /// `[N, 1]` to `[N]`.
    fn flatten(&mut self, x: &str, output: &str) -> String {
        if !self.initializers.iter().any(|t| t.name == "flat_shape") {
            self.initializers.push(proto::TensorProto {
                dims: vec![1],
                data_type: INT64,
                int64_data: vec![-1],
                name: "flat_shape".to_owned(),
                double_data: Vec::new(),
            });
        }
        self.node("Reshape", &[x, "flat_shape"], output)
    }

    /// `1 / (1 + exp(−z))`.
    fn sigmoid(&mut self, z: &str, output: &str) -> String {
        let one = self.scalar("one", 1.0);
        let neg = self.node("Neg", &[z], "neg_logit");
        let e = self.node("Exp", &[&neg], "exp_neg_logit");
        let denom = self.node("Add", &[&e, &one], "one_plus_exp");
        self.node("Reciprocal", &[&denom], output)
    }
}

/// The subset of `onnx/onnx.proto` (IR version 7) this writer uses, with the field
/// numbers of that file. Fields not written are left out.
pub(crate) mod proto {
    /// `ModelProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ModelProto {
        #[prost(int64, tag = "1")]
        pub(crate) ir_version: i64,
        #[prost(message, repeated, tag = "8")]
        pub(crate) opset_import: Vec<OperatorSetIdProto>,
        #[prost(string, tag = "2")]
        pub(crate) producer_name: String,
        #[prost(string, tag = "3")]
        pub(crate) producer_version: String,
        #[prost(string, tag = "4")]
        pub(crate) domain: String,
        #[prost(int64, tag = "5")]
        pub(crate) model_version: i64,
        #[prost(string, tag = "6")]
        pub(crate) doc_string: String,
        #[prost(message, optional, tag = "7")]
        pub(crate) graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "14")]
        pub(crate) metadata_props: Vec<StringStringEntryProto>,
    }

    /// `OperatorSetIdProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub(crate) domain: String,
        #[prost(int64, tag = "2")]
        pub(crate) version: i64,
    }

    /// `StringStringEntryProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct StringStringEntryProto {
        #[prost(string, tag = "1")]
        pub(crate) key: String,
        #[prost(string, tag = "2")]
        pub(crate) value: String,
    }

    /// `GraphProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub(crate) node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub(crate) name: String,
        #[prost(message, repeated, tag = "5")]
        pub(crate) initializer: Vec<TensorProto>,
        #[prost(string, tag = "10")]
        pub(crate) doc_string: String,
        #[prost(message, repeated, tag = "11")]
        pub(crate) input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub(crate) output: Vec<ValueInfoProto>,
    }

    /// `NodeProto` (no attributes).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub(crate) input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub(crate) output: Vec<String>,
        #[prost(string, tag = "3")]
        pub(crate) name: String,
        #[prost(string, tag = "4")]
        pub(crate) op_type: String,
        #[prost(string, tag = "7")]
        pub(crate) domain: String,
    }

    /// `TensorProto` (values in `double_data` or `int64_data`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub(crate) dims: Vec<i64>,
        /// A `TensorProto.DataType`: 11 `DOUBLE`, 7 `INT64`.
        #[prost(int32, tag = "2")]
        pub(crate) data_type: i32,
        #[prost(int64, repeated, tag = "7")]
        pub(crate) int64_data: Vec<i64>,
        #[prost(string, tag = "8")]
        pub(crate) name: String,
        #[prost(double, repeated, tag = "10")]
        pub(crate) double_data: Vec<f64>,
    }

    /// `ValueInfoProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(message, optional, tag = "2")]
        pub(crate) r#type: Option<TypeProto>,
        #[prost(string, tag = "3")]
        pub(crate) doc_string: String,
    }

    /// `TypeProto` (tensor types only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TypeProto {
        #[prost(oneof = "TypeValue", tags = "1")]
        pub(crate) value: Option<TypeValue>,
    }

    /// `TypeProto.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum TypeValue {
        /// `tensor_type`.
        #[prost(message, tag = "1")]
        TensorType(TensorType),
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TensorType {
        /// A `TensorProto.DataType`.
        #[prost(int32, tag = "1")]
        pub(crate) elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub(crate) shape: Option<TensorShapeProto>,
    }

    /// `TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub(crate) dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Dimension {
        #[prost(oneof = "DimensionValue", tags = "1, 2")]
        pub(crate) value: Option<DimensionValue>,
    }

    /// `TensorShapeProto.Dimension.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum DimensionValue {
        /// `dim_value`.
        #[prost(int64, tag = "1")]
        DimValue(i64),
        /// `dim_param`.
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn task(model: &str) -> TaskSpec {
        let label = if model.contains("glm") {
            ""
        } else {
            "positive = \"1\"\nnegative = \"0\"\n"
        };
        TaskSpec::from_toml_str(&format!(
            "name = \"t\"\nrounds = 1\nmin_partners = 1\nround_deadline_secs = 10\n\
             local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\nseed = 1\n{model}\n\
             [schema]\nnumeric = [\"a\", \"b\"]\n[schema.label]\ncolumn = \"y\"\n{label}"
        ))
        .expect("task")
    }

    fn decode(bytes: &[u8]) -> proto::ModelProto {
        proto::ModelProto::decode(bytes).expect("decodes")
    }

    fn standardizer() -> Standardizer {
        Standardizer::from_parts(vec![1.0, 2.0], vec![0.5, 4.0]).expect("standardizer")
    }

    #[test]
    fn logistic_graph_has_the_documented_shape_and_metadata() {
        let t = task("[model]\nkind = \"logistic_regression\"\n");
        let meta = [("task".to_owned(), "t".to_owned())];
        let bytes = to_onnx(&t, &[0.5, -1.0, 0.25], &standardizer(), &meta).expect("export");
        let m = decode(&bytes);
        assert_eq!((m.ir_version, m.opset_import[0].version), (7, 13));
        let g = m.graph.expect("graph");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "Sub",
                "Mul",
                "MatMul",
                "Add",
                "Reshape",
                "Neg",
                "Exp",
                "Add",
                "Reciprocal"
            ]
        );
        let init = |name: &str| g.initializer.iter().find(|t| t.name == name).expect(name);
        assert_eq!(init("mean").double_data, [1.0, 2.0]);
        assert_eq!(init("inv_std").double_data, [2.0, 0.25]);
        assert_eq!(init("logit_weights").dims, [2, 1]);
        assert_eq!(init("logit_weights").double_data, [0.5, -1.0]);
        assert_eq!(init("logit_bias").double_data, [0.25]);
        assert_eq!(g.input[0].name, INPUT);
        assert_eq!(g.output[0].name, OUTPUT);
        let last = g.node.last().expect("nodes");
        assert_eq!(last.output, [OUTPUT]);
        let props: Vec<(&str, &str)> = m
            .metadata_props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert!(props.contains(&("kind", "logistic_regression")));
        assert!(props.contains(&("features", "[\"a\",\"b\"]")));
        assert!(props.contains(&("task", "t")));
    }

    #[test]
    fn mlp_weights_are_transposed_to_fan_in_by_fan_out() {
        let t = task("[model]\nkind = \"mlp\"\nhidden = [3]\n");
        // Hidden layer: 3 × 2 weights row-major (unit j's weights into it), 3 biases;
        // output: 3 weights, 1 bias.
        let params: Vec<f64> = (0..13).map(f64::from).collect();
        let bytes = to_onnx(&t, &params, &standardizer(), &[]).expect("export");
        let g = decode(&bytes).graph.expect("graph");
        let init = |name: &str| g.initializer.iter().find(|t| t.name == name).expect(name);
        assert_eq!(init("layer0_weights").dims, [2, 3]);
        assert_eq!(
            init("layer0_weights").double_data,
            [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
        );
        assert_eq!(init("layer0_bias").double_data, [6.0, 7.0, 8.0]);
        assert_eq!(init("layer1_weights").double_data, [9.0, 10.0, 11.0]);
        assert_eq!(init("layer1_bias").double_data, [12.0]);
        assert_eq!(g.node.iter().filter(|n| n.op_type == "Relu").count(), 1);
    }

    #[test]
    fn glm_log_link_clamps_then_exponentiates_and_gaussian_does_not() {
        let glm = |family: &str| {
            let t = task(&format!("[model]\nkind = \"glm\"\nfamily = \"{family}\"\n"));
            let g = decode(&to_onnx(&t, &[1.0, 2.0, 3.0], &standardizer(), &[]).expect("export"))
                .graph
                .expect("graph");
            g.node.iter().map(|n| n.op_type.clone()).collect::<Vec<_>>()
        };
        assert_eq!(glm("poisson")[4..], ["Reshape", "Clip", "Exp"]);
        assert_eq!(glm("gaussian")[4..], ["Reshape"]);
    }

    #[test]
    fn wrong_parameters_or_standardisation_are_refused() {
        let t = task("[model]\nkind = \"logistic_regression\"\n");
        let err = to_onnx(&t, &[1.0, 2.0], &standardizer(), &[]).unwrap_err();
        assert!(matches!(err, OnnxError::Model(_)), "{err}");
        let three = Standardizer::from_parts(vec![0.0; 3], vec![1.0; 3]).expect("st");
        let err = to_onnx(&t, &[1.0, 2.0, 3.0], &three, &[]).unwrap_err();
        assert!(matches!(err, OnnxError::Standardization { .. }), "{err}");
    }

    #[test]
    fn a_kind_without_a_graph_is_refused_by_name() {
        for kind in [
            ModelKind::LogisticRegression,
            ModelKind::Mlp,
            ModelKind::Glm,
        ] {
            check_supported(kind).expect("supported");
        }
        // Matrix factorisation (recommendation) has no ONNX graph: its user factors
        // stay with each partner. The check runs once the kind exists.
        if let Ok(kind) = serde_json::from_str::<ModelKind>("\"matrix_factorization\"") {
            let err = check_supported(kind).unwrap_err();
            assert!(err.to_string().contains("`matrix_factorization`"), "{err}");
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/recommend_mf.toml");
            let t = TaskSpec::load(path).expect("the bundled recommendation task");
            let err = to_onnx(&t, &[], &standardizer(), &[]).unwrap_err();
            assert!(matches!(err, OnnxError::Unsupported { .. }), "{err}");
        }
    }
}
