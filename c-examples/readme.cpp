#include <fpl.h>

#include <cerrno>
#include <iostream>
#include <memory>

int main() {
    fpl_lock *raw = nullptr;
    fpl_error err;
    int rc = fpl_acquire("vm.qcow2", FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &raw, &err);
    if (rc != 0) {
        std::cerr << err.message << '\n';  // QEMU's message, the holder named
        return rc == -EAGAIN ? 75 : 1;
    }
    std::unique_ptr<fpl_lock, decltype(&fpl_release)> lock(raw, fpl_release);

    // ... write vm.qcow2 ...
    fpl_status st;
    if (fpl_query("vm.qcow2", 0, &st, nullptr, 0, &err) == 0)
        std::cout << "perm " << st.perm << ", unshared " << st.unshared << '\n';
}
