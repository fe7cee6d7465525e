//! vSVA in the engine: guest tables in both formats bound with ATTACH_TABLE, translation,
//! INVALIDATE, page requests, hostile tables ([`guest`] builds the tables by hand).

mod control;
mod formats;
pub mod guest;
mod hostile;
mod requests;
mod translate;
