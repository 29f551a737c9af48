//! Parts shared by the tests of one binary, stopped when the binary exits.
//!
//! A shared part lives in a [`SharedSlot`]; the first test to ask starts it, later tests get the
//! same `Arc`. Statics are never dropped, so the first start also registers an `atexit` hook that
//! empties every slot: after the last test, `Drop` of each part runs as for a local one (processes
//! stopped, temp dirs removed). If the binary is killed outright, `PR_SET_PDEATHSIG` still takes
//! the processes down (see `process.rs`).

use std::sync::{Arc, Mutex, Once, PoisonError};

type Cleanup = Box<dyn FnOnce() + Send>;

static AT_EXIT: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

/// A lazily started part shared by the tests of one binary.
pub(crate) struct SharedSlot<T>(Mutex<Option<Arc<T>>>);

impl<T: Send + Sync + 'static> SharedSlot<T> {
    pub(crate) const fn new() -> Self {
        SharedSlot(Mutex::new(None))
    }

    /// The shared part, started by `start` on first use. Tests asking meanwhile wait for it.
    pub(crate) fn get_or_start(&'static self, start: impl FnOnce() -> T) -> Arc<T> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(part) = slot.as_ref() {
            return Arc::clone(part);
        }
        let part = Arc::new(start());
        *slot = Some(Arc::clone(&part));
        at_exit(Box::new(move || {
            drop(self.0.lock().unwrap_or_else(PoisonError::into_inner).take())
        }));
        part
    }
}

fn at_exit(cleanup: Cleanup) {
    REGISTER.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: `run_at_exit` is a plain `extern "C" fn` that neither unwinds (it catches panics)
        // nor touches thread-locals; registering it once is all atexit(3) requires.
        unsafe {
            nix::libc::atexit(run_at_exit);
        }
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(cleanup);
}

extern "C" fn run_at_exit() {
    let cleanups = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(PoisonError::into_inner));
    // Reverse order: parts started later may depend on earlier ones.
    for cleanup in cleanups.into_iter().rev() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
    }
}
