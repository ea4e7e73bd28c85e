//! What a compliance auditor does with a ledger: verify its integrity, report what it says, and
//! reconcile a partner's copy against the coordinator's.

mod compare;
mod report;
mod verify;

pub use compare::{Disagreement, RELATIVE_TOLERANCE, approx_eq, compare};
pub use report::{
    CertificateSummary, ReportVerification, RngWarning, esc as escape_html, format_time_utc,
    report_html, report_html_verified, report_table, rng_warnings,
};
pub use verify::{
    ExpectedHead, Problem, ProblemKind, VerifyReport, verify, verify_with_head,
    verify_with_progress,
};
