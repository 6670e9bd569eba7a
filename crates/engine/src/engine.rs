//! The engine thread and its handle: the thread owns model, cache and scheduler and runs the
//! step loop; the handle submits requests and reads stats.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::model::{CausalLm, ModelConfig};
use crate::request::{Event, GenerateRequest};
use crate::text::TextProcessor;
use crate::{EngineConfig, EngineStats, Result, SubmitError};

/// Handle to the engine thread. Cheap to share behind an `Arc`.
pub struct Engine {}

impl Engine {
    /// Spawns the engine thread.
    pub fn start(_model: Box<dyn CausalLm>, _text: Arc<TextProcessor>, _cfg: EngineConfig) -> Result<Self> {
        todo!("engine")
    }
    /// Queues a request. Dropping the receiver cancels it wherever it is.
    pub fn submit(&self, _req: GenerateRequest) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        todo!("engine")
    }
    pub fn stats(&self) -> EngineStats {
        todo!("engine")
    }
    pub fn text(&self) -> &Arc<TextProcessor> {
        todo!("engine")
    }
    pub fn model_config(&self) -> &ModelConfig {
        todo!("engine")
    }
    /// Longest prompt + completion a request may ask for.
    pub fn max_model_len(&self) -> usize {
        todo!("engine")
    }
    /// Whether the engine thread is alive.
    pub fn is_running(&self) -> bool {
        todo!("engine")
    }
}
