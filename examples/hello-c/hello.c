/* Prints "Hello, World!" and exits: a WASI command module when built with
 * clang --target=wasm32-wasi and wasi-libc, as the wasmlet.kube.wasm_module role does. */
#include <stdio.h>

int main(void) {
    puts("Hello, World!");
    return 0;
}
