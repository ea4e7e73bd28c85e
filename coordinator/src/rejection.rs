//! Why a partner's message was refused, and what the partner should make of it.
//!
//! Every [`Rejection`] says which message it is about ([`Subject`]), what
//! failed, and what the coordinator expected instead; its [`RejectionCode`]
//! sorts it into one of three kinds, each with one gRPC status code:
//!
//! | code | gRPC | meaning |
//! |------|------|---------|
//! | [`Invalid`](RejectionCode::Invalid) | `INVALID_ARGUMENT` | the message is malformed or fails a check: sending it again unchanged will not help |
//! | [`OutOfPhase`](RejectionCode::OutOfPhase) | `FAILED_PRECONDITION` | the message does not fit the protocol's current phase: late, early, not asked of this partner, or already answered |
//! | [`Unavailable`](RejectionCode::Unavailable) | `UNAVAILABLE` | the coordinator cannot take it now (its own failure): the same message may succeed later |
//!
//! A refused message leaves the session open: the service answers it with a
//! `consortia.v1.Rejection` carrying the reason, the code and what was
//! expected ([`Rejection::to_wire`]). A session ended by the coordinator ends
//! with the same mapping ([`Rejection::status`]).

use std::fmt;

use tonic::{Code, Status};

/// The kind of a refusal: what the partner should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCode {
    /// Malformed, or fails a check (shape, values, signature). `INVALID_ARGUMENT`.
    Invalid,
    /// Does not fit the protocol's current phase. `FAILED_PRECONDITION`.
    OutOfPhase,
    /// The coordinator cannot take it now; it may later. `UNAVAILABLE`.
    Unavailable,
}

impl RejectionCode {
    /// The gRPC status code of this kind of refusal.
    pub fn grpc(self) -> Code {
        match self {
            RejectionCode::Invalid => Code::InvalidArgument,
            RejectionCode::OutOfPhase => Code::FailedPrecondition,
            RejectionCode::Unavailable => Code::Unavailable,
        }
    }
}

/// The message a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A message as such (no kind, or the wrong first message).
    Message,
    /// `Hello`.
    Hello,
    /// A feature-statistics report.
    Statistics,
    /// An evaluation report.
    Evaluation,
    /// A refusal to take part in a round.
    Decline,
    /// A refusal to decrypt a round's sum.
    DecryptionRefusal,
    /// A model update in the clear (or one of its chunks).
    Update,
    /// An encrypted update (or one of its chunks).
    EncryptedUpdate,
    /// A key-generation commitment.
    KeyCommitment,
    /// A revealed public-key share.
    KeyShare,
    /// A piece of a key holder's partial decryption.
    DecryptionShare,
    /// A key holder's commitment to its challenge seed.
    ChallengeCommitment,
    /// A key holder's revealed challenge seed.
    ChallengeSeed,
    /// A contributor's signed sketch of its update's masks.
    Sketch,
    /// A message of a t-of-N key's dealing (subshare keys, dealing, outcome).
    ThresholdCeremony,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Subject::Message => "message",
            Subject::Hello => "Hello",
            Subject::Statistics => "feature statistics",
            Subject::Evaluation => "evaluation",
            Subject::Decline => "refusal of the round",
            Subject::DecryptionRefusal => "refusal to decrypt",
            Subject::Update => "update",
            Subject::EncryptedUpdate => "encrypted update",
            Subject::KeyCommitment => "key commitment",
            Subject::KeyShare => "public key share",
            Subject::DecryptionShare => "decryption share",
            Subject::ChallengeCommitment => "challenge commitment",
            Subject::ChallengeSeed => "challenge seed",
            Subject::Sketch => "signed sketch",
            Subject::ThresholdCeremony => "threshold key dealing",
        })
    }
}

/// Why a message from a partner was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No round is open.
    NoOpenRound {
        /// Round the message was for.
        round: u64,
    },
    /// The message names a round other than the open one.
    WrongRound {
        /// Round the message was for.
        got: u64,
        /// The open round.
        open: u64,
    },
    /// The round the message was for has closed.
    Closed {
        /// Round the message was for.
        round: u64,
    },
    /// The partner was not selected for this round.
    NotSelected {
        /// The open round.
        round: u64,
    },
    /// The partner already answered this round.
    Duplicate {
        /// The open round.
        round: u64,
    },
    /// The message does not fit the protocol's current phase.
    OutOfPhase {
        /// The message refused.
        subject: Subject,
        /// Why not now.
        why: String,
        /// What the coordinator takes now.
        expected: String,
    },
    /// The message is malformed or fails a check.
    Invalid {
        /// The message refused.
        subject: Subject,
        /// What a valid message holds.
        expected: String,
        /// What this one holds.
        found: String,
    },
    /// The coordinator cannot take the message now.
    Unavailable {
        /// The message refused.
        subject: Subject,
        /// Why not (without the coordinator's internals).
        why: String,
    },
}

impl Rejection {
    /// The `reason` code of this refusal: the label of the rejection metrics and the
    /// `reason` field of its log event.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::NoOpenRound { .. } => "no_open_round",
            Rejection::WrongRound { .. } => "wrong_round",
            Rejection::Closed { .. } => "closed",
            Rejection::NotSelected { .. } => "not_selected",
            Rejection::Duplicate { .. } => "duplicate",
            Rejection::OutOfPhase { .. } => "out_of_phase",
            Rejection::Invalid { .. } => "invalid",
            Rejection::Unavailable { .. } => "unavailable",
        }
    }

    /// A message that does not fit the current phase.
    pub fn out_of_phase(
        subject: Subject,
        why: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Rejection::OutOfPhase {
            subject,
            why: why.into(),
            expected: expected.into(),
        }
    }

    /// A malformed message: a valid one holds `expected`, this one `found`.
    pub fn invalid(
        subject: Subject,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Rejection::Invalid {
            subject,
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// A message the coordinator cannot take now.
    pub fn unavailable(subject: Subject, why: impl Into<String>) -> Self {
        Rejection::Unavailable {
            subject,
            why: why.into(),
        }
    }

    /// The kind of refusal.
    pub fn code(&self) -> RejectionCode {
        match self {
            Rejection::Invalid { .. } => RejectionCode::Invalid,
            Rejection::Unavailable { .. } => RejectionCode::Unavailable,
            Rejection::NoOpenRound { .. }
            | Rejection::WrongRound { .. }
            | Rejection::Closed { .. }
            | Rejection::NotSelected { .. }
            | Rejection::Duplicate { .. }
            | Rejection::OutOfPhase { .. } => RejectionCode::OutOfPhase,
        }
    }

    /// What the coordinator expected instead.
    pub fn expected(&self) -> String {
        match self {
            Rejection::NoOpenRound { .. } => "answers only while a round is open".into(),
            Rejection::WrongRound { open, .. } => format!("answers for round {open}"),
            Rejection::Closed { .. } => "answers before the round's deadline".into(),
            Rejection::NotSelected { .. } => {
                "answers only from the partners selected for the round".into()
            }
            Rejection::Duplicate { .. } => "one answer per partner and round".into(),
            Rejection::OutOfPhase { expected, .. } | Rejection::Invalid { expected, .. } => {
                expected.clone()
            }
            Rejection::Unavailable { .. } => "the same message again later".into(),
        }
    }

    /// The gRPC status for this refusal (code and reason).
    pub fn status(&self) -> Status {
        Status::new(self.code().grpc(), self.to_string())
    }

    /// The refusal as sent to the partner (the session stays open);
    /// `round` is the round open now (0 if none).
    pub fn to_wire(&self, round: u64) -> consortia_proto::Rejection {
        consortia_proto::Rejection {
            round,
            reason: self.to_string(),
            code: self.code().grpc() as i32,
            expected: self.expected(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoOpenRound { round } => {
                write!(f, "update for round {round} refused: no round is open")
            }
            Rejection::WrongRound { got, open } => write!(
                f,
                "update for round {got} refused: the open round is {open}"
            ),
            Rejection::Closed { round } => write!(
                f,
                "update for round {round} refused: the round has closed (late)"
            ),
            Rejection::NotSelected { round } => {
                write!(f, "update refused: you were not selected for round {round}")
            }
            Rejection::Duplicate { round } => write!(
                f,
                "update refused: your answer for round {round} was already received"
            ),
            Rejection::OutOfPhase {
                subject,
                why,
                expected,
            } => write!(f, "{subject} refused: {why}; expected {expected}"),
            Rejection::Invalid {
                subject,
                expected,
                found,
            } => write!(f, "{subject} refused: {found}; expected {expected}"),
            Rejection::Unavailable { subject, why } => {
                write!(f, "{subject} not taken: {why}; send it again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_a_code_a_status_and_what_was_expected() {
        let cases = [
            (Rejection::Closed { round: 3 }, Code::FailedPrecondition),
            (Rejection::Duplicate { round: 3 }, Code::FailedPrecondition),
            (
                Rejection::out_of_phase(
                    Subject::KeyCommitment,
                    "no key generation is in progress",
                    "updates for round 3",
                ),
                Code::FailedPrecondition,
            ),
            (
                Rejection::invalid(Subject::Update, "5 parameters", "3 parameters"),
                Code::InvalidArgument,
            ),
            (
                Rejection::unavailable(Subject::EncryptedUpdate, "storage"),
                Code::Unavailable,
            ),
        ];
        for (r, code) in cases {
            let status = r.status();
            assert_eq!(status.code(), code, "{r}");
            assert_eq!(status.message(), r.to_string());
            let wire = r.to_wire(3);
            assert_eq!((wire.round, wire.code), (3, code as i32));
            assert!(!wire.expected.is_empty(), "{r:?}");
        }
        let r = Rejection::invalid(Subject::Update, "5 parameters", "3 parameters");
        assert_eq!(
            r.to_string(),
            "update refused: 3 parameters; expected 5 parameters"
        );
    }
}
