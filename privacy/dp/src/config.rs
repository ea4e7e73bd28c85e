//! The task file's `[privacy]` table and what one round costs a partner.
//!
//! ```toml
//! [privacy]
//! unit = "record"            # or "partner"; default "record"
//! placement = "local"        # or "distributed"; default "local"
//! epsilon = 3.0
//! delta = 1e-6
//! clip_norm = 1.0
//! noise_multiplier = 1.1
//! sampling_rate = 0.01       # record unit only: each partner's Poisson rate per local step
//! steps_per_round = 10       # record unit only: local DP-SGD steps per round; default 1
//! accountant = "rdp"         # default "rdp"
//! evaluation_noise = 10.0    # σ_e of the discrete Gaussian on each evaluation count; default 10, ≥ 1
//! evaluate_every = 0         # 0 (default): evaluate only the final model; N: also every N-th round's
//! statistics_noise_multiplier = 10.0  # z_s of the Gaussian on the standardisation statistics; default 10, ≥ 1
//! evaluation_bounds = [0, 1000]        # glm only, required there: public [lo, hi] of target and prediction
//! ```
//!
//! The clip norm is fixed for the whole task: adaptive clipping is not supported, and a table
//! that asks for it (`[privacy.adaptive_clipping]`) is refused by name.

use serde::{Deserialize, Serialize};

use super::accountant::{AccountantKind, DpEvent};
use super::budget::Budget;
use super::ddg::DdgParams;
use super::error::DpError;
use super::mechanism::{NoisePlacement, PrivacyUnit, check_clip, check_noise_multiplier};

fn default_steps() -> u64 {
    1
}

fn default_evaluation_noise() -> f64 {
    super::release::DEFAULT_EVALUATION_NOISE
}

fn default_statistics_noise_multiplier() -> f64 {
    super::release::DEFAULT_STATISTICS_NOISE_MULTIPLIER
}

/// Differential-privacy settings of a task (`[privacy]` of the task file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    /// Whose participation is hidden; default [`PrivacyUnit::Record`].
    #[serde(default)]
    pub unit: PrivacyUnit,
    /// Who adds noise; default [`NoisePlacement::Local`].
    #[serde(default)]
    pub placement: NoisePlacement,
    /// Total ε budget per partner over the whole task.
    pub epsilon: f64,
    /// δ of the budget; must be below 1/rows of the smallest partner.
    pub delta: f64,
    /// L2 clip C: per example (record unit) or of the model delta (partner unit).
    pub clip_norm: f64,
    /// z: noise standard deviation / C.
    pub noise_multiplier: f64,
    /// Record unit: the probability with which each row of a partner joins a local batch,
    /// drawn independently per row and per step inside the partner (Poisson sampling, the
    /// condition of the amplification the accountant applies). Not allowed for the partner unit
    /// (no amplification by partner selection is claimed).
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// Record unit: local DP-SGD steps per round (each one Poisson-sampled Gaussian event).
    #[serde(default = "default_steps")]
    pub steps_per_round: u64,
    /// Accountant; default and only value [`AccountantKind::Rdp`].
    #[serde(default)]
    pub accountant: AccountantKind,
    /// Per-partner ε budgets that replace `epsilon` for the named partners
    /// (`[privacy.partner_epsilon]`, partner name → ε). A partner whose budget
    /// runs out is left out of later rounds.
    #[serde(default)]
    pub partner_epsilon: std::collections::BTreeMap<String, f64>,
    /// σ_e: standard deviation of the discrete Gaussian noise a partner adds to each count of
    /// its evaluation histograms (each evaluation is `1/(2σ_e²)`-zCDP, see
    /// [`release`](super::release)). Default 10; must be finite and ≥ 1.
    #[serde(default = "default_evaluation_noise")]
    pub evaluation_noise: f64,
    /// Which models partners evaluate: 0 (default) only the final model; N > 0 also the model
    /// of every N-th round. Each evaluation is charged to every partner's budget.
    #[serde(default)]
    pub evaluate_every: u32,
    /// z_s: noise multiplier of the Gaussian mechanism that releases a partner's feature
    /// statistics (count, per-feature sums and sums of squares of its clipped, scaled training
    /// rows) once per task; one release is `Gaussian { z_s }` (see
    /// [`release`](super::release)). Default 10; must be finite and ≥ 1.
    #[serde(default = "default_statistics_noise_multiplier")]
    pub statistics_noise_multiplier: f64,
    /// Public bounds `[lo, hi]` of a regression (`glm`) task's target and prediction, in the
    /// label's units: under the record unit each held-out row's target and prediction are
    /// clipped to them before its evaluation is summed and noised (see
    /// [`release`](super::release)). Required by a `glm` task with `[privacy]` (the task refuses
    /// to load without it, naming the key); not allowed for other models. Domain knowledge,
    /// never taken from any partner's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_bounds: Option<[f64; 2]>,
    /// Distributed placement: the update length, `n_min` and the number of
    /// colluders the round's DDG parameters are derived from (set with
    /// [`with_distributed_shape`](Self::with_distributed_shape); not in the task file).
    #[serde(skip)]
    pub distributed_shape: Option<DistributedShape>,
}

/// What distributed rounds are calibrated on, besides the `[privacy]` table.
///
/// Threat model: the coordinator plus up to `colluders` partners pool what
/// they know. Each colluder knows its own noise share and can subtract it from
/// a decrypted sum, so only the shares of the other `n_min − colluders`
/// partners count (Kairouz, Liu, Steinke 2021 calibrate the local noise on the
/// clients whose shares are guaranteed in the sum and unknown to the
/// adversary, σ_local = σ/√n_honest). Every partner therefore adds a
/// share of variance `σ²/(n_min − colluders)`, and a round is charged for
/// `n_min − colluders` honest shares, whose total variance is `σ²`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedShape {
    /// Length of the vector each partner encodes (model parameters).
    pub dim: usize,
    /// Least number of partners whose noise shares are in every decrypted sum
    /// (the task's `min_partners`).
    pub n_min: usize,
    /// `t`: partners that may collude with the coordinator (the task's
    /// `colluders`); always below `n_min`.
    pub colluders: usize,
}

impl DistributedShape {
    /// `n_min − colluders`: the noise shares in every sum that the coordinator
    /// and its colluders do not know.
    pub fn honest_shares(&self) -> usize {
        self.n_min.saturating_sub(self.colluders)
    }
}

/// `n_min − colluders`, refusing `colluders >= n_min` (and `n_min = 0`).
fn honest_shares(n_min: usize, colluders: usize) -> Result<usize, DpError> {
    if colluders >= n_min {
        return Err(DpError::TooManyColluders { colluders, n_min });
    }
    Ok(n_min - colluders)
}

/// Integer steps per clip norm in distributed rounds: γ = C / 2^16, so one
/// row's (or one partner's) clipped contribution spans 65,536 integer units
/// and the rounding error (at most √d' units, KLS21 Thm 1 Eq. 2 with β = 0) is
/// negligible next to it.
pub const DDG_SCALE_BITS: u32 = 16;

impl PrivacySpec {
    /// The (ε, δ) budget.
    pub fn budget(&self) -> Budget {
        Budget {
            epsilon: self.epsilon,
            delta: self.delta,
        }
    }

    /// The (ε, δ) budget of `partner`: its entry in `partner_epsilon`, else the task's.
    pub fn budget_for(&self, partner: &str) -> Budget {
        Budget {
            epsilon: self
                .partner_epsilon
                .get(partner)
                .copied()
                .unwrap_or(self.epsilon),
            delta: self.delta,
        }
    }

    /// Checks every figure: ε > 0, δ ∈ (0, 1), C > 0, z > 0, q ∈ (0, 1] for the record unit
    /// (and absent for the partner unit), steps ≥ 1, σ_e ≥ 1, z_s ≥ 1.
    pub fn validate(&self) -> Result<(), DpError> {
        self.budget().validate()?;
        for partner in self.partner_epsilon.keys() {
            self.budget_for(partner).validate()?;
        }
        check_clip(self.clip_norm)?;
        check_noise_multiplier(self.noise_multiplier)?;
        match (self.unit, self.sampling_rate) {
            (PrivacyUnit::Record, None | Some(1.0))
                if self.placement == NoisePlacement::Distributed => {}
            (PrivacyUnit::Record, Some(_)) if self.placement == NoisePlacement::Distributed => {
                return Err(DpError::Unsupported(
                    "placement = \"distributed\" with unit = \"record\" takes one full-batch step per \
                     round over every row (no amplification by sampling is claimed for the discrete \
                     Gaussian sum): remove `sampling_rate`",
                ));
            }
            (PrivacyUnit::Record, None) => {
                return Err(DpError::InvalidParameter {
                    name: "sampling_rate",
                    value: "missing".into(),
                    hint: "unit = \"record\" needs `sampling_rate` (each row's Poisson rate per local step, e.g. 0.01)",
                });
            }
            (PrivacyUnit::Record, Some(q)) if !(q > 0.0 && q <= 1.0) => {
                return Err(DpError::InvalidSamplingRate(q));
            }
            (PrivacyUnit::Partner, Some(_)) => {
                return Err(DpError::Unsupported(
                    "`sampling_rate` applies to unit = \"record\" only; remove it for unit = \"partner\" \
                     (no amplification by partner selection is claimed)",
                ));
            }
            _ => {}
        }
        if self.steps_per_round == 0 {
            return Err(DpError::InvalidParameter {
                name: "steps_per_round",
                value: "0".into(),
                hint: "set `steps_per_round` to at least 1",
            });
        }
        if self.placement == NoisePlacement::Distributed
            && self.unit == PrivacyUnit::Record
            && self.steps_per_round != 1
        {
            return Err(DpError::Unsupported(
                "placement = \"distributed\" adds one noise share per round: set steps_per_round = 1 \
                 (or remove it)",
            ));
        }
        super::release::check_evaluation_noise(self.evaluation_noise)?;
        if let Some(bounds) = self.evaluation_bounds {
            super::release::check_evaluation_bounds(bounds)?;
        }
        super::release::check_statistics_noise(self.statistics_noise_multiplier)
    }

    /// [`validate`](Self::validate) plus δ < 1/rows of the smallest partner.
    pub fn validate_for_rows(&self, smallest_partner_rows: usize) -> Result<(), DpError> {
        self.validate()?;
        self.budget().validate_for_rows(smallest_partner_rows)
    }

    /// What one round costs a partner with `partner_rows` rows, local placement:
    ///
    /// * record unit: `steps_per_round` × `PoissonSampledGaussian { q, z }` (DP-SGD; per step the
    ///   clipped sum has sensitivity C under add/remove of one row, noise z·C);
    /// * partner unit: 1 × `Gaussian { z }` (DP-FedAvg; the clipped delta has sensitivity C
    ///   under add/remove of the partner, noise z·C).
    ///
    /// Distributed placement needs the round's DDG parameters: see
    /// [`round_events_distributed`](Self::round_events_distributed).
    pub fn round_events(&self, partner_rows: usize) -> Result<Vec<(DpEvent, u64)>, DpError> {
        self.validate_for_rows(partner_rows)?;
        if self.placement == NoisePlacement::Distributed {
            let shape = self.distributed_shape.ok_or(DpError::Unsupported(
                "placement = \"distributed\" is charged from its DDG parameters: give the spec the \
                 update length, n_min and colluders first (with_distributed_shape)",
            ))?;
            let params = self.ddg_params(shape.dim, shape.n_min, shape.colluders, 62)?;
            return self.round_events_distributed(&params);
        }
        Ok(match self.unit {
            PrivacyUnit::Record => vec![(
                DpEvent::PoissonSampledGaussian {
                    sampling_rate: self.sampling_rate.unwrap_or(1.0),
                    noise_multiplier: self.noise_multiplier,
                },
                self.steps_per_round,
            )],
            PrivacyUnit::Partner => vec![(
                DpEvent::Gaussian {
                    noise_multiplier: self.noise_multiplier,
                },
                1,
            )],
        })
    }

    /// The same spec, calibrated for distributed rounds on `dim`-long updates
    /// with at least `n_min` partners in every sum, up to `colluders` of whom
    /// may pool their knowledge with the coordinator ([`DistributedShape`]).
    /// Refuses `colluders >= n_min` with [`DpError::TooManyColluders`].
    pub fn with_distributed_shape(
        mut self,
        dim: usize,
        n_min: usize,
        colluders: usize,
    ) -> Result<Self, DpError> {
        honest_shares(n_min, colluders)?;
        self.distributed_shape = Some(DistributedShape {
            dim,
            n_min,
            colluders,
        });
        Ok(self)
    }

    /// `t` of the spec's [`DistributedShape`]; refuses a spec without one
    /// (distributed noise cannot be calibrated without knowing `t`).
    pub fn colluders(&self) -> Result<usize, DpError> {
        self.distributed_shape
            .map(|s| s.colluders)
            .ok_or(DpError::Unsupported(
                "placement = \"distributed\" is calibrated on the colluders the task assumes: give \
                 the spec its update length, n_min and colluders first (with_distributed_shape)",
            ))
    }

    /// DDG parameters of a distributed round (KLS21 Alg. 1 with β = 0, i.e.
    /// unconditional randomised rounding): γ = C/2^[`DDG_SCALE_BITS`], and with
    /// `h = n_min − colluders` honest shares, each partner's integer σ =
    /// z·2^16/√h, reduced modulo 2^`bits`. Against the coordinator plus up to
    /// `colluders` partners, any sum over n ≥ n_min partners still holds at
    /// least `h` shares the coalition does not know, whose sum has real std
    /// z·C (variance h·σ²·γ² = z²C²); the returned parameters carry `h` as
    /// their [`DdgParams::n_min`], so [`ddg_round_rho`](super::ddg::ddg_round_rho)
    /// charges exactly those shares (KLS21 Thm 1 with n = h).
    /// Refuses `colluders >= n_min` with [`DpError::TooManyColluders`].
    ///
    /// Sensitivity (both units): neighbouring inputs differ by one clipped
    /// vector of norm ≤ C (a row's gradient or a partner's delta). Coupling
    /// the two roundings on the same uniforms moves each coordinate by less
    /// than one more unit, so the rounded vectors differ by at most
    /// `C/γ + √d'` — KLS21 Thm 1 Eq. 2's bound for β = 0 ([`DdgParams::norm_bound`]).
    pub fn ddg_params(
        &self,
        dim: usize,
        n_min: usize,
        colluders: usize,
        bits: u32,
    ) -> Result<DdgParams, DpError> {
        let honest = honest_shares(n_min, colluders)?;
        let scale = f64::from(1u32 << DDG_SCALE_BITS);
        let gamma = self.clip_norm / scale;
        let local_sigma = self.noise_multiplier * scale / (honest as f64).sqrt();
        DdgParams::new(dim, self.clip_norm, gamma, 0.0, local_sigma, honest, bits)
    }

    /// What one distributed-discrete-Gaussian round costs a partner (partner unit):
    /// `Zcdp { ρ = ddg_round_rho(params) }`.
    pub fn round_events_distributed(
        &self,
        params: &DdgParams,
    ) -> Result<Vec<(DpEvent, u64)>, DpError> {
        self.validate()?;
        if self.placement != NoisePlacement::Distributed {
            return Err(DpError::Unsupported(
                "DDG rounds need placement = \"distributed\"",
            ));
        }
        Ok(vec![(params.round_event(), 1)])
    }
}
