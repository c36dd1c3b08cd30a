//! Invariant 6, durability, with 5 and 7: random histories, with the engine closed and reopened
//! at random points, on the durable store (a temporary directory) and on the in-memory store.
//! A close is a crash (the runtime dropped at once, actors and all, sometimes with a write in
//! flight) or a clean `shutdown`. After every reopen every account, read live and as its store
//! rebuilds it, equals the model of the acknowledged operations; a write that was in flight
//! when the engine crashed either landed whole or not at all, and its retry (a client that got
//! no answer retries) answers as the model does.
//!
//! Histories come from the same step generator as the model test (plus reopens). Moving the
//! clock also passivates idle accounts (a snapshot saved, the actor stopped), so recovery starts
//! from snapshots as well as from the journal; and it reads every account at once, so every due
//! hold expires at a known point. Shrinking still removes steps and simplifies amounts.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest_state_machine::ReferenceStateMachine;
use tally::{
    DurableConfig, DurableStore, ManualClock, MemStore, OpId, Store, StoreError, SyncMode, Tally,
};

use super::calls::{answer, write_to, Write};
use super::model::{
    assert_audit_matches, assert_store_matches, engine_config, initial, run, runtime, setup, step,
    write_step, Close, RefState, Step, ALL, START,
};

/// Which store an engine runs on.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Mem,
    Durable,
}

/// The step generator of the model test, plus closes and reopens.
pub struct RecoveryRef;

impl ReferenceStateMachine for RecoveryRef {
    type State = RefState;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<RefState> {
        initial(true)
    }

    fn transitions(state: &RefState) -> BoxedStrategy<Step> {
        let reopen = prop_oneof![
            3 => (write_step(state), 0..16u8).prop_map(|(w, turns)| Step::Reopen {
                close: Close::Crash,
                inflight: Some((Box::new(w), turns)),
            }),
            2 => Just(Step::Reopen { close: Close::Crash, inflight: None }),
            2 => Just(Step::Reopen { close: Close::Shutdown, inflight: None }),
        ];
        Union::new_weighted(vec![(16, step(state)), (2, reopen.boxed())]).boxed()
    }

    fn apply(mut state: RefState, step: &Step) -> RefState {
        let _ = state.apply(step);
        state
    }
}

/// An engine that can be closed and reopened on the same store.
struct Engine {
    kind: Kind,
    dir: tempfile::TempDir,
    mem: MemStore,
    clock: ManualClock,
    rt: Option<tokio::runtime::Runtime>,
    tally: Option<Tally>,
    store: Option<Arc<dyn Store>>,
}

fn open_durable(dir: &Path) -> DurableStore {
    let mut config = DurableConfig::new(dir);
    config.limits = super::small_limits();
    config.sync = SyncMode::Data;
    // A store dropped a moment ago may still be closing: retry while its directory is locked.
    for _ in 0..500 {
        match DurableStore::open(config.clone()) {
            Ok((store, _)) => return store,
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("reopening the durable store: {e}"),
        }
    }
    panic!("the data directory stayed locked");
}

impl Engine {
    fn new(kind: Kind) -> Engine {
        let mut engine = Engine {
            kind,
            dir: tempfile::tempdir().expect("a temporary directory"),
            mem: MemStore::new(super::small_limits()),
            clock: ManualClock::new(START),
            rt: None,
            tally: None,
            store: None,
        };
        engine.open();
        engine
    }

    fn open(&mut self) {
        let store: Arc<dyn Store> = match self.kind {
            Kind::Mem => Arc::new(self.mem.clone()),
            Kind::Durable => Arc::new(open_durable(self.dir.path())),
        };
        let rt = runtime();
        // Idle accounts leave memory (snapshot saved) a minute of the manual clock after their
        // last use: moving the clock passivates them, and the next access reloads them.
        let config = tally::EngineConfig {
            idle_passivate_after: Duration::from_secs(60),
            supervisor_tick: Duration::from_millis(2),
            ..engine_config(&self.clock)
        };
        let tally = rt
            .block_on(Tally::open(store.clone(), config))
            .expect("the engine opens");
        self.rt = Some(rt);
        self.tally = Some(tally);
        self.store = Some(store);
    }

    fn tally(&self) -> &Tally {
        self.tally.as_ref().expect("open")
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("open").block_on(f)
    }

    /// Closes the engine (a crash, possibly with `inflight` sent `turns` turns before it, or a
    /// shutdown) and reopens it on the same store.
    fn close_and_reopen(&mut self, close: Close, inflight: Option<&(OpId, Write, u8)>) {
        let rt = self.rt.take().expect("open");
        let tally = self.tally.take().expect("open");
        self.store = None;
        match close {
            Close::Shutdown => rt.block_on(tally.shutdown()).expect("shutdown"),
            Close::Crash => {
                if let Some((op, write, turns)) = inflight.cloned() {
                    let sender = tally.clone();
                    rt.spawn(async move { write_to(&sender, op, &write).await });
                    rt.block_on(async {
                        for _ in 0..turns {
                            tokio::task::yield_now().await;
                        }
                    });
                }
                drop(tally);
            }
        }
        // Dropping the runtime drops every task mid-flight: actors, the request in flight.
        drop(rt);
        self.open();
    }

    /// Every account, read live and as the store rebuilds it, equals the model.
    fn assert_matches(&self, model: &mut RefState) {
        let store = self.store.as_ref().expect("open");
        assert_store_matches(store.as_ref(), &model.ledger);
        for id in ALL {
            let step = Step::Inspect(id);
            let expected = model.apply(&step);
            let got = self.block_on(run(self.tally(), &self.clock, &step, &model.ledger, true));
            assert_eq!(
                got, expected,
                "after reopening, {id:?} differs from the model"
            );
        }
        self.block_on(assert_audit_matches(self.tally(), &model.ledger));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let (Some(rt), Some(tally)) = (self.rt.take(), self.tally.take()) {
            rt.block_on(async move { drop(tally) });
        }
    }
}

/// Runs a history on an engine over `kind`, reopening it where the history says.
fn run_history(kind: Kind, _initial: RefState, steps: Vec<Step>, seen: Option<Arc<AtomicUsize>>) {
    let mut model = RefState::empty(true);
    let mut engine = Engine::new(kind);
    for step in setup() {
        let expected = model.apply(&step);
        let got = engine.block_on(run(
            engine.tally(),
            &engine.clock,
            &step,
            &model.ledger,
            true,
        ));
        assert_eq!(got, expected, "setup: {step:?}");
    }
    for step in &steps {
        if let Some(seen) = &seen {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        match step {
            Step::Reopen { close, inflight } => {
                // The write in flight, with its names resolved as of now.
                let inflight = inflight
                    .as_ref()
                    .map(|(step, turns)| match model.resolve(step) {
                        Step::Write(op, write) => (op, write, *turns),
                        other => panic!("not a write: {other:?}"),
                    });
                engine.close_and_reopen(*close, inflight.as_ref());
                if let Some((op, write, _)) = inflight {
                    // Landed whole or not at all: the engine remembers the id with the outcome
                    // the model gives it (or with the earlier outcome, for an id used before).
                    let before = model.ledger.remembered(write.executor(), op);
                    let found = engine.block_on(engine.tally().find_op(write.executor(), op));
                    let retry = Step::Write(op, write);
                    let expected = model.apply(&retry);
                    match (before, found) {
                        (Some(outcome), found) => assert_eq!(found, Ok(Some(outcome))),
                        (None, Ok(Some(outcome))) => assert_eq!(
                            Ok(answer(outcome)),
                            expected,
                            "the write in flight landed with another outcome"
                        ),
                        (None, _) => {}
                    }
                    // The client got no answer and retries: it gets the model's answer.
                    let got = engine.block_on(run(
                        engine.tally(),
                        &engine.clock,
                        &retry,
                        &model.ledger,
                        true,
                    ));
                    assert_eq!(got, expected, "the retry after the crash of {retry:?}");
                }
                engine.assert_matches(&mut model);
            }
            step => {
                let expected = model.apply(step);
                let step = model.last_step.clone().expect("the model ran the step");
                let got = engine.block_on(run(
                    engine.tally(),
                    &engine.clock,
                    &step,
                    &model.ledger,
                    true,
                ));
                assert_eq!(got, expected, "the engine and the model differ at {step:?}");
            }
        }
    }
    // And a last crash: everything acknowledged survives it.
    engine.close_and_reopen(Close::Crash, None);
    engine.assert_matches(&mut model);
}

proptest! {
    #![proptest_config(super::config())]

    /// On the durable store: every acknowledged operation survives crashes and shutdowns, and
    /// the recovered engine equals the model.
    #[test]
    fn the_durable_store_recovers_exactly_what_was_acknowledged(
        (initial, steps, seen) in RecoveryRef::sequential_strategy(1..24)
    ) {
        run_history(Kind::Durable, initial, steps, seen);
        super::case_passed("the_durable_store_recovers_exactly_what_was_acknowledged");
    }

    /// The same on the in-memory store (an engine reopened on the journal it left).
    #[test]
    fn the_in_memory_store_recovers_exactly_what_was_acknowledged(
        (initial, steps, seen) in RecoveryRef::sequential_strategy(1..40)
    ) {
        run_history(Kind::Mem, initial, steps, seen);
        super::case_passed("the_in_memory_store_recovers_exactly_what_was_acknowledged");
    }
}
