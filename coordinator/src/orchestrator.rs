//! The public paths of the former round-loop module, kept for the binary,
//! tests and benches: the hub is in [`crate::hub`], the task loop in
//! [`crate::task`], the table and summary in [`crate::report`].

pub use crate::hub::{Hub, RevocationCheck};
pub use crate::report::{
    TaskSummary, print_table_header, print_table_row, print_task_table_header,
};
pub use crate::task::run_task;
