//! The actors of the executor and how they are supervised (see the crate docs for the tree).
//!
//! - [`supervisor`]: the run supervisor and the persistence supervisor;
//! - [`run`]: the RunActor, which walks one plan;
//! - [`step`]: the StepActor, one agent call attempt;
//! - [`persistence`]: the only writer of the database, batching writes into transactions;
//! - [`sweeper`]: finds runs nothing else will bring back and hands them to the run supervisor;
//! - [`memory`]: a persistence actor that keeps nothing (unit tests, the engine benchmark);
//! - [`events`]: what runs report as they progress (the source of monitoring updates).

pub mod events;
pub mod memory;
pub mod persistence;
pub mod run;
pub mod step;
pub mod supervisor;
pub mod sweeper;

#[cfg(test)]
pub(crate) mod testing;
