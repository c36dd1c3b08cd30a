//! The supervisor: parent of every account actor. It restarts failed accounts (by retiring their
//! slot, so the next request reloads the account's last durable state from the store) and
//! passivates idle accounts and, past the resident cap, the least recently used ones. It is not
//! on the request path: routing goes through the handle's concurrent map.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::actor::AccountMsg;
use crate::shared::Shared;

/// Messages the supervisor handles.
pub(crate) enum SupervisorMsg {
    /// Periodic: passivate idle accounts.
    Tick,
    /// More accounts are resident than the cap: passivate the least recently used.
    Evict,
}

pub(crate) struct Supervisor;

pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    last_checkpoint: Instant,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(shared.config.supervisor_tick, || SupervisorMsg::Tick);
        Ok(SupervisorState {
            shared,
            last_checkpoint: Instant::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        match message {
            SupervisorMsg::Tick => {
                passivate_idle(shared);
                if state.last_checkpoint.elapsed() >= shared.config.checkpoint_interval {
                    state.last_checkpoint = Instant::now();
                    // Snapshot writes and archiving are blocking I/O: keep them off the workers.
                    let worker = shared.clone();
                    let done = tokio::task::spawn_blocking(move || worker.checkpoint()).await;
                    if let Err(e) = done
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        tracing::warn!(error = %e, "checkpoint failed; the journal keeps growing until one succeeds");
                    }
                }
            }
            SupervisorMsg::Evict => {
                shared.evict_least_recent();
                shared.eviction_done();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some((_, id)) = shared.actors.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::error!(account = %id, %error, "account actor failed; reloading it from the store on next use");
                let _stripe = shared.stripe(id);
                if let Some(slot) = shared.resident.get(&id).map(|s| s.clone()) {
                    let mut state = slot.state.lock();
                    shared.retire(&slot, &mut state);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                shared.actors.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

fn passivate_idle(shared: &Shared) {
    let idle_ms = u64::try_from(shared.config.idle_passivate_after.as_millis()).unwrap_or(u64::MAX);
    let horizon = shared.now_ms().saturating_sub(idle_ms);
    for entry in shared.resident.iter() {
        let slot = entry.value();
        if slot.last_access_ms.load(Ordering::Relaxed) < horizon
            && slot.inflight.load(Ordering::Relaxed) == 0
        {
            if let Some(actor) = slot.actor.get() {
                let _ = actor.send_message(AccountMsg::Passivate);
            }
        }
    }
}
