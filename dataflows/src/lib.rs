//! What shopstream maintains: pure timely/differential views, one per module, no I/O.
//!
//! A view is a function from input collections to arrangements (see
//! [`profiles::profiles`]); the host (`shopstream`'s `runtime`) feeds the inputs,
//! advances time and reads the traces by cursor.

pub mod profiles;
pub mod rules;
pub mod segments;
pub mod types;
