//! Calling libfpl's C ABI from Rust tests: paths, zeroed structs, messages.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fpl::ffi::*;

/// The path as a C string.
pub fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a temp path")
}

/// An fpl_error to pass in.
pub fn new_error() -> fpl_error {
    fpl_error::default()
}

/// The error's message.
pub fn message(err: &fpl_error) -> String {
    // SAFETY: libfpl always NUL-terminates the message.
    unsafe { CStr::from_ptr(err.message.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A holder's process name.
pub fn name(h: &fpl_holder) -> String {
    // SAFETY: NUL-terminated by libfpl.
    unsafe { CStr::from_ptr(h.name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// fpl_query with FPL_QUERY_HOLDERS and room for 8 holders: the return
/// code, the status, the holders written, the error.
pub fn c_query(image: &Path) -> (i32, fpl_status, Vec<fpl_holder>, fpl_error) {
    let path = c_path(image);
    let mut status = fpl_status::default();
    let mut holders: Vec<fpl_holder> = (0..8).map(|_| fpl_holder::default()).collect();
    let mut err = new_error();
    // SAFETY: valid pointers; holders has 8 elements.
    let rc = unsafe {
        fpl_query(
            path.as_ptr(),
            FPL_QUERY_HOLDERS,
            &mut status,
            holders.as_mut_ptr(),
            holders.len(),
            &mut err,
        )
    };
    holders.truncate((status.n_holders as usize).min(8));
    (rc, status, holders, err)
}
