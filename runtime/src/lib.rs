//! Switchyard's runtime: where workers are (discovery) and how requests reach them (request
//! plane). Everything here is chosen once at start-up behind a trait, so the frontend and the
//! workers never know which store or transport they run on.

pub mod discovery;
pub mod error;
pub mod events;
pub mod plane;
pub mod store;

pub use discovery::{Discovery, InstanceWatch, Instances, LeaseHealth, Registration};
pub use error::{Error, Result};
pub use plane::{ChunkStream, GenerateHandler, RequestClient};
pub use store::{KvStore, LeaseId, WatchEvent, WatchStream};
