//! What the actors tests (and benches) share.

#[allow(dead_code)]
pub mod cluster;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// A parent that outlives the replicas it is given (ractor's default stops with the first
/// child that stops), so a test sees a replica's failure itself.
#[allow(dead_code)] // not every test file uses it
pub struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        _: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}
