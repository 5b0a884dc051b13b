//! Property tests: the /proc parsers never panic on arbitrary input, and
//! the permission policy holds its invariants for arbitrary integers.

use fpl::fdinfo::{lock_lines, parse_lock_line, LockClass};
use fpl::protocol::{Held, Request};
use fpl::PermSet;
use proptest::prelude::*;

/// Lines shaped like the kernel's, with every field free to be wrong.
fn lockish_line() -> impl Strategy<Value = String> {
    (
        "[0-9]{0,3}:?",
        prop_oneof![
            Just("POSIX"),
            Just("OFDLCK"),
            Just("FLOCK"),
            Just("->"),
            Just("LEASE")
        ],
        prop_oneof![
            Just("ADVISORY"),
            Just("MANDATORY"),
            Just("ACTIVE"),
            Just("")
        ],
        prop_oneof![Just("READ"), Just("WRITE"), Just("UNLCK"), Just("x")],
        "-?[0-9]{0,12}",
        "[0-9a-f]{0,9}:[0-9a-f]{0,9}:[0-9]{0,25}",
        "[0-9]{0,25}",
        prop_oneof!["[0-9]{0,25}".prop_map(|s| s), Just("EOF".to_owned())],
    )
        .prop_map(|(id, class, mode, ty, pid, dev, first, last)| {
            format!("{id} {class} {mode} {ty} {pid} {dev} {first} {last}")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn lock_line_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_lock_line(&text);
        let _ = lock_lines(&text).count();
    }

    #[test]
    fn lock_line_parser_never_panics_on_near_misses(line in lockish_line()) {
        if let Some(l) = parse_lock_line(&line) {
            // Whatever it accepts is coherent.
            prop_assert!(l.last.is_none_or(|last| last >= l.first));
            prop_assert!(l.class != LockClass::Other || !line.contains("POSIX"));
            let mut held = Held::default();
            held.add_range(l.first, l.last);
        }
        let fdinfo = format!("pos:\t0\nflags:\t02\nlock:\t{line}\nlock:{line}\n");
        let _ = lock_lines(&fdinfo).count();
    }

    #[test]
    fn held_ranges_never_panic(first in any::<u64>(), last in proptest::option::of(any::<u64>())) {
        let mut held = Held::default();
        held.add_range(first, last);
        if last.is_some_and(|l| l < first) {
            prop_assert!(held.is_empty());
        }
    }

    #[test]
    fn the_policy_refuses_every_bit_outside_all(perm in any::<u32>(), shared in any::<u32>(), exact in any::<bool>()) {
        match (PermSet::try_from(perm), PermSet::try_from(shared)) {
            (Ok(p), Ok(s)) => {
                prop_assert!(perm <= 0xf && shared <= 0xf);
                let plan = Request { perm: p, shared: s, exact }.plan();
                // Only protocol bytes, and the runs cover exactly them.
                let runs = plan.lock.runs();
                let covered: Vec<u32> = runs.iter().flat_map(|(f, l)| *f..f + l).collect();
                prop_assert_eq!(covered, plan.lock.iter().collect::<Vec<_>>());
                for b in plan.lock.iter() {
                    prop_assert!((100..=103).contains(&b) || (200..=203).contains(&b));
                }
                if !exact {
                    // Strict: never 102, and write without 202 is impossible.
                    prop_assert!(!plan.lock.contains(102));
                    prop_assert_eq!(plan.lock.contains(201), plan.lock.contains(202));
                    if plan.lock.contains(103) {
                        prop_assert!(plan.lock.contains(101));
                    }
                }
                // What is locked to refuse i is what others test when using i.
                prop_assert!(plan.tests.len() <= 10);
            }
            _ => prop_assert!(perm > 0xf || shared > 0xf),
        }
    }
}
