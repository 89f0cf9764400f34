//! One handler per console verb. Each takes the connected console, its
//! noun, the secret read before connecting (when the verb needs one) and
//! the output format, and prints through `render`.

pub(super) mod audit;
pub(super) mod backup;
pub(super) mod cancel;
pub(super) mod define;
pub(super) mod delete;
pub(super) mod expire;
pub(super) mod lock;
pub(super) mod move_data;
pub(super) mod ping;
pub(super) mod query;
pub(super) mod recover;
pub(super) mod register;
pub(super) mod remove;
pub(super) mod replicate;
pub(super) mod rotate;
pub(super) mod schedule;
pub(super) mod set;
pub(super) mod switch;
pub(super) mod update;
