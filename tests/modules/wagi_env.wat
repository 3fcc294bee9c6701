;; A WAGI handler: answers "Content-Type: text/plain", a blank line, then each environment
;; variable as NAME=value on a line of its own, then "body=" and the request body (stdin).
;; Memory layout: 0 count, 4 size of the strings, 16 iovec, 24 bytes moved, 32 "\n", 40 the header,
;; 80 "body=", 1024 the pointers, 8192 the strings (at most 120 KiB), 131072 the body (64 KiB).
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (data (i32.const 32) "\n")
  (data (i32.const 40) "Content-Type: text/plain\n\n")
  (data (i32.const 80) "body=")
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))
  (func $out (param $p i32) (param $len i32)
    (i32.store (i32.const 16) (local.get $p))
    (i32.store (i32.const 20) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24))))
  (func (export "_start") (local $i i32) (local $p i32)
    (call $out (i32.const 40) (i32.const 26))
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 1024) (i32.const 8192)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 0))))
        (local.set $p (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
        (call $out (local.get $p) (call $strlen (local.get $p)))
        (call $out (i32.const 32) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $out (i32.const 80) (i32.const 5))
    (i32.store (i32.const 16) (i32.const 131072))
    (i32.store (i32.const 20) (i32.const 65536))
    (drop (call $read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $out (i32.const 131072) (i32.load (i32.const 24)))))
