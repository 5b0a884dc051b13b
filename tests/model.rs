//! Model checking of the protocol: every interleaving of two and three
//! parties doing lock / test / roll back (and prepare / commit / abort for
//! updates) one byte at a time, with the bytes and tests libfpl's planner
//! produces, strict and exact. In no reachable state may two parties whose
//! requests conflict both hold them. The same explorer, fed test-then-lock
//! programs, must find a violation: it is known to be able to fail.

use std::collections::HashSet;

use fpl::protocol::{ByteSet, Plan, Request};
use fpl::{Mode, PermSet};

const CR: u32 = 0x1;
const W: u32 = 0x2;
const WU: u32 = 0x4;
const RS: u32 = 0x8;

/// What a request means, written from PROTOCOL.md independently of the
/// planner: the permissions used and refused. Strict mode folds write
/// unchanged into write, makes resize imply write, and refusing either
/// write refuses both writes and resize; QEMU (exact) takes bits as given.
fn meaning(r: Request) -> (u32, u32) {
    let (perm, shared) = (r.perm.bits(), r.shared.bits());
    if r.exact {
        return (perm, !shared & 0xf);
    }
    let mut uses = perm;
    if uses & (WU | RS) != 0 {
        uses |= W;
    }
    uses &= !WU;
    let mut refuses = !shared & 0xf;
    if refuses & (W | WU) != 0 {
        refuses |= W | WU | RS;
    }
    (uses, refuses)
}

fn conflict(a: Request, b: Request) -> bool {
    let (ua, ra) = meaning(a);
    let (ub, rb) = meaning(b);
    ua & rb != 0 || ub & ra != 0
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Step {
    Lock(u32),
    Test(u32),
}

/// Which order a party runs its steps in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// PROTOCOL.md §2 (and libfpl): lock everything, then test.
    LockThenTest,
    /// The broken order: test, then lock.
    TestThenLock,
}

#[derive(Clone, Debug)]
struct Party {
    /// The request held before (an update), if any.
    before: Option<Request>,
    /// The bytes held before the program starts.
    start: u16,
    /// The request the program obtains.
    after: Request,
    steps: Vec<Step>,
}

fn bit(byte: u32) -> u16 {
    match byte {
        100..=103 => 1 << (byte - 100),
        200..=203 => 1 << (byte - 200 + 4),
        _ => panic!("byte {byte} outside the protocol"),
    }
}

fn mask(set: ByteSet) -> u16 {
    set.iter().map(bit).fold(0, |m, b| m | b)
}

fn program(added: ByteSet, plan: &Plan, skip_tests: bool, order: Order) -> Vec<Step> {
    let locks = added.iter().map(Step::Lock);
    let tests = plan
        .tests
        .iter()
        .filter(|_| !skip_tests)
        .map(|t| Step::Test(t.byte));
    match order {
        Order::LockThenTest => locks.chain(tests).collect(),
        Order::TestThenLock => tests.chain(locks).collect(),
    }
}

fn acquire(r: Request, order: Order) -> Party {
    let plan = r.plan();
    Party {
        before: None,
        start: 0,
        after: r,
        steps: program(plan.lock, &plan, false, order),
    }
}

/// An update from `from` (held) to `to`, as Lock::update does it: lock what
/// is added, test unless it only loosens, then commit or abort.
fn update(from: Request, to: Request, order: Order) -> Party {
    let old = from.plan();
    let new = to.plan();
    let loosening = new.only_loosens(&old);
    Party {
        before: Some(from),
        start: mask(old.lock),
        after: to,
        steps: program(new.lock.minus(old.lock), &new, loosening, order),
    }
}

/// A party's progress.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Phase {
    /// Next step to run.
    Running(u8),
    /// A test failed: unlocking what this program added, one byte a step.
    RollingBack,
    /// Finished with its new request.
    Holding,
    /// Finished without it (an update keeps its old request).
    Refused,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    phase: Vec<Phase>,
    held: Vec<u16>,
}

/// The request each party holds in a state, for the safety check: an
/// acquirer holds nothing until its last test passed; an updater holds its
/// old request until then (or for ever, if refused).
fn holds(p: &Party, phase: Phase) -> Option<Request> {
    match phase {
        Phase::Holding => Some(p.after),
        _ => p.before,
    }
}

struct Outcome {
    states: usize,
    violation: Option<String>,
}

fn explore(parties: &[Party]) -> Outcome {
    let start = State {
        phase: vec![Phase::Running(0); parties.len()],
        held: parties.iter().map(|p| p.start).collect(),
    };
    let mut seen: HashSet<State> = HashSet::new();
    let mut stack = vec![start];
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        for i in 0..parties.len() {
            for j in i + 1..parties.len() {
                let (a, b) = (
                    holds(&parties[i], s.phase[i]),
                    holds(&parties[j], s.phase[j]),
                );
                if let (Some(a), Some(b)) = (a, b) {
                    if conflict(a, b) {
                        return Outcome {
                            states: seen.len(),
                            violation: Some(format!("{a:?} and {b:?} both held in {s:?}")),
                        };
                    }
                }
            }
        }
        for (i, p) in parties.iter().enumerate() {
            if let Some(next) = step(p, i, &s) {
                stack.push(next);
            }
        }
    }
    Outcome {
        states: seen.len(),
        violation: None,
    }
}

/// The state after party `i` takes one step, if it has one left.
fn step(p: &Party, i: usize, s: &State) -> Option<State> {
    let mut n = s.clone();
    match s.phase[i] {
        Phase::Running(pc) => {
            let pc = usize::from(pc);
            match p.steps.get(pc) {
                None => {
                    n.phase[i] = Phase::Holding;
                    // Commit: drop what the new request no longer needs.
                    n.held[i] = mask(p.after.plan().lock);
                }
                Some(Step::Lock(b)) => {
                    n.held[i] |= bit(*b);
                    n.phase[i] = Phase::Running(pc as u8 + 1);
                }
                Some(Step::Test(b)) => {
                    let others = s
                        .held
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| *k != i)
                        .fold(0u16, |m, (_, h)| m | h);
                    n.phase[i] = if others & bit(*b) != 0 {
                        Phase::RollingBack
                    } else {
                        Phase::Running(pc as u8 + 1)
                    };
                }
            }
        }
        Phase::RollingBack => {
            // Unlock the lowest byte this program added and still holds.
            let added = s.held[i] & !p.start;
            if added == 0 {
                n.phase[i] = Phase::Refused;
            } else {
                n.held[i] &= !(added & added.wrapping_neg());
            }
        }
        Phase::Holding | Phase::Refused => return None,
    }
    Some(n)
}

fn requests() -> Vec<Request> {
    let mut all = Vec::new();
    for exact in [false, true] {
        for mode in Mode::ALL {
            all.push(Request {
                perm: mode.perm(),
                shared: mode.shared(),
                exact,
            });
        }
    }
    all
}

fn every_request() -> Vec<Request> {
    let mut all = Vec::new();
    for exact in [false, true] {
        for perm in 0..16 {
            for shared in 0..16 {
                all.push(Request {
                    perm: PermSet::from_bits(perm).expect("4 bits"),
                    shared: PermSet::from_bits(shared).expect("4 bits"),
                    exact,
                });
            }
        }
    }
    all
}

#[test]
fn two_parties_never_both_hold_conflicting_requests() {
    let mut states = 0;
    let mut runs = 0;
    // Every preset (strict and exact) against every possible request.
    for a in requests() {
        for b in every_request() {
            let out = explore(&[
                acquire(a, Order::LockThenTest),
                acquire(b, Order::LockThenTest),
            ]);
            assert_eq!(out.violation, None);
            states += out.states;
            runs += 1;
        }
    }
    println!("{runs} pairs, {states} states explored, no violation");
}

#[test]
fn three_parties_never_hold_conflicting_requests() {
    let mut states = 0;
    let reqs = requests();
    for a in &reqs {
        for b in &reqs {
            for c in &reqs {
                let out = explore(&[
                    acquire(*a, Order::LockThenTest),
                    acquire(*b, Order::LockThenTest),
                    acquire(*c, Order::LockThenTest),
                ]);
                assert_eq!(out.violation, None);
                states += out.states;
            }
        }
    }
    println!(
        "{} triples, {states} states explored, no violation",
        reqs.len().pow(3)
    );
}

#[test]
fn updates_never_let_conflicting_requests_coexist() {
    let reqs = requests();
    let mut states = 0;
    for from in &reqs {
        for to in &reqs {
            for other in &reqs {
                // An update racing an acquisition...
                let out = explore(&[
                    update(*from, *to, Order::LockThenTest),
                    acquire(*other, Order::LockThenTest),
                ]);
                assert_eq!(out.violation, None);
                states += out.states;
                // ...and two updates racing each other, from compatible holds.
                if !conflict(*from, *other) {
                    for other_to in &reqs {
                        let out = explore(&[
                            update(*from, *to, Order::LockThenTest),
                            update(*other, *other_to, Order::LockThenTest),
                        ]);
                        assert_eq!(out.violation, None);
                        states += out.states;
                    }
                }
            }
        }
    }
    println!("updates: {states} states explored, no violation");
}

#[test]
fn the_explorer_finds_the_race_of_testing_before_locking() {
    let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
    let out = explore(&[
        acquire(write, Order::TestThenLock),
        acquire(write, Order::TestThenLock),
    ]);
    let violation = out.violation.expect("test-then-lock lets two writers in");
    println!("found after {} states: {violation}", out.states);

    let reader = Request::new(Mode::Read.perm(), Mode::Read.shared());
    let out = explore(&[
        acquire(write, Order::TestThenLock),
        acquire(reader, Order::TestThenLock),
    ]);
    assert!(
        out.violation.is_some(),
        "a writer and a stable reader race too"
    );

    // An update that tests before locking its new bytes is just as broken.
    let shared = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
    let out = explore(&[
        update(shared, write, Order::TestThenLock),
        update(shared, write, Order::TestThenLock),
    ]);
    assert!(
        out.violation.is_some(),
        "two read-shared holders upgrading to write"
    );
}

#[test]
fn the_semantics_know_what_conflicts() {
    let r = |m: Mode, exact| Request {
        perm: m.perm(),
        shared: m.shared(),
        exact,
    };
    assert!(conflict(r(Mode::Write, false), r(Mode::Write, true)));
    assert!(conflict(r(Mode::Read, false), r(Mode::Write, false)));
    assert!(!conflict(r(Mode::ReadShared, false), r(Mode::Write, false)));
    assert!(conflict(
        r(Mode::ReadShared, true),
        r(Mode::Exclusive, false)
    ));
    // QEMU's write-unchanged user next to a strict party refusing write.
    let wu = Request {
        perm: PermSet::from_bits(CR | WU).expect("bits"),
        shared: PermSet::ALL,
        exact: true,
    };
    assert!(conflict(wu, r(Mode::Read, false)));
    assert!(!conflict(wu, r(Mode::ReadShared, false)));
}

// ------------------------------------------------------ forks and spawns
//
// A second model: one party P holds a request on its own open file
// description, a child gets a copy of the descriptor (fork runs the
// pthread_atfork handlers; posix_spawn, vfork, clone and raw
// syscall(SYS_fork) do not), and a party Q acquires meanwhile. The kernel
// facts (PROTOCOL.md §3): the locks belong to the description, an explicit
// unlock through any copy removes them, and closing one copy drops them
// only when no other copy is left.

/// How a child got its copy of P's descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Child {
    /// fork(): atfork handlers run; the child may call release itself.
    Fork,
    /// posix_spawn, vfork, clone: no handler runs; the child execs (or
    /// exits) and never calls libfpl.
    Spawn,
}

/// What release does: libfpl's rule, or the optimisation it dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Release {
    /// Unlock explicitly in the acquiring process; in any other process
    /// only close the copy.
    Explicit,
    /// The old rule: close without unlocking when the atfork counter saw no
    /// fork; a child's release unlocks the shared description.
    SkipUnlockIfNoForkSeen,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Copy {
    None,
    /// Alive; `seen`: the atfork counter saw it.
    Alive {
        seen: bool,
    },
    Gone,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Lifecycle {
    /// Bytes on P's description.
    p_held: u16,
    /// P has released (its release returned).
    p_released: bool,
    /// P closed its descriptor without unlocking: the bytes go with the
    /// last copy.
    p_closed: bool,
    copy: Copy,
    child_released: bool,
    q_phase: Phase,
    q_held: u16,
}

fn lifecycle(p: Request, child: Child, q: Request, rule: Release) -> Outcome {
    let q_party = acquire(q, Order::LockThenTest);
    let start = Lifecycle {
        p_held: mask(p.plan().lock),
        p_released: false,
        p_closed: false,
        copy: Copy::None,
        child_released: false,
        q_phase: Phase::Running(0),
        q_held: 0,
    };
    let mut seen: HashSet<Lifecycle> = HashSet::new();
    let mut stack = vec![start];
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        if !s.p_released && s.q_phase == Phase::Holding && conflict(p, q) {
            return Outcome {
                states: seen.len(),
                violation: Some(format!("P {p:?} and Q {q:?} both hold in {s:?}")),
            };
        }
        if s.p_released && s.p_held != 0 {
            return Outcome {
                states: seen.len(),
                violation: Some(format!("P's release returned, its bytes stay: {s:?}")),
            };
        }
        let mut next = Vec::new();
        // The child is made, while P holds.
        if s.copy == Copy::None && !s.p_released {
            let mut n = s.clone();
            n.copy = Copy::Alive {
                seen: child == Child::Fork,
            };
            next.push(n);
        }
        if let Copy::Alive { .. } = s.copy {
            // A forked child releases its copy of the handle.
            if child == Child::Fork && !s.child_released {
                let mut n = s.clone();
                n.child_released = true;
                if rule == Release::SkipUnlockIfNoForkSeen {
                    n.p_held = 0;
                }
                n.copy = Copy::Gone;
                if n.p_closed {
                    n.p_held = 0;
                }
                next.push(n);
            }
            // The child exits or execs: its copy is closed.
            let mut n = s.clone();
            n.copy = Copy::Gone;
            if n.p_closed {
                n.p_held = 0;
            }
            next.push(n);
        }
        // P releases.
        if !s.p_released {
            let mut n = s.clone();
            n.p_released = true;
            let alive = matches!(s.copy, Copy::Alive { .. });
            let fork_seen =
                matches!(s.copy, Copy::Alive { seen: true } | Copy::Gone) && child == Child::Fork;
            match rule {
                Release::Explicit => n.p_held = 0,
                Release::SkipUnlockIfNoForkSeen if fork_seen => n.p_held = 0,
                Release::SkipUnlockIfNoForkSeen if alive => n.p_closed = true,
                Release::SkipUnlockIfNoForkSeen => n.p_held = 0,
            }
            next.push(n);
        }
        // Q takes a step of its acquisition, against P's description.
        let both = State {
            phase: vec![Phase::Holding, s.q_phase],
            held: vec![s.p_held, s.q_held],
        };
        if let Some(after) = step(&q_party, 1, &both) {
            let mut n = s.clone();
            n.q_phase = after.phase[1];
            n.q_held = after.held[1];
            next.push(n);
        }
        stack.extend(next);
    }
    Outcome {
        states: seen.len(),
        violation: None,
    }
}

#[test]
fn forked_and_spawned_children_never_let_conflicting_requests_coexist() {
    let mut states = 0;
    for p in requests() {
        for q in requests() {
            for child in [Child::Fork, Child::Spawn] {
                let out = lifecycle(p, child, q, Release::Explicit);
                assert_eq!(out.violation, None, "{child:?}");
                states += out.states;
            }
        }
    }
    println!("forks and spawns: {states} states explored, no violation");
}

#[test]
fn the_explorer_finds_what_skipping_the_unlock_did() {
    let write = Request::new(Mode::Write.perm(), Mode::Write.shared());
    // A forked child's release unlocked the parent's description: a second
    // writer gets in while the first still holds.
    let out = lifecycle(write, Child::Fork, write, Release::SkipUnlockIfNoForkSeen);
    let violation = out.violation.expect("a child's release lets a writer in");
    assert!(violation.contains("both hold"), "{violation}");
    // A spawned child (no atfork handler) kept the bytes after a release
    // that skipped the unlock.
    let reader = Request::new(Mode::ReadShared.perm(), Mode::ReadShared.shared());
    let out = lifecycle(write, Child::Spawn, reader, Release::SkipUnlockIfNoForkSeen);
    let violation = out.violation.expect("a spawned child keeps the bytes");
    assert!(violation.contains("release returned"), "{violation}");
}
