//! The panic boundary of the C ABI: a panic never unwinds into C and is
//! never printed; it becomes `-EIO` with a message.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many C entry points this thread is inside.
    static INSIDE: Cell<u32> = const { Cell::new(0) };
}

static QUIET_HOOK: Once = Once::new();

/// Frees the quiet hook when libfpl.so is unloaded (dlclose). Each load of
/// the shared library has its own std and so its own hook, which std never
/// frees: without this a plugin host loses the hook's box on every cycle.
#[used]
#[link_section = ".fini_array"]
static DROP_QUIET_HOOK: extern "C" fn() = drop_quiet_hook;

extern "C" fn drop_quiet_hook() {
    if QUIET_HOOK.is_completed() && !std::thread::panicking() {
        drop(std::panic::take_hook());
    }
}

/// Runs `body`, catching a panic. Inside, the panic hook stays silent (the
/// library never prints); elsewhere in a Rust host the previous hook runs.
///
/// Unwind safety is asserted: the only state a body can leave half-changed
/// is a lock handle, and the algorithm records its bytes only after each
/// step succeeds, so a handle stays releasable.
pub fn catch<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if INSIDE.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    INSIDE.with(|n| n.set(n.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(body));
    INSIDE.with(|n| n.set(n.get().saturating_sub(1)));
    result.map_err(|payload| describe(payload.as_ref()))
}

fn describe(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_owned());
    format!("internal error in libfpl (a bug, please report it): {what}")
}
