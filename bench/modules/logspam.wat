;; Prints "start", then @LINES@ lines of 48 bytes as fast as it can (one fd_write each), then exits.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovecs: 0 {ptr=200, len=6} "start\n"; 8 {ptr=300, len=48} the line
  (data (i32.const 0) "\c8\00\00\00\06\00\00\00")
  (data (i32.const 8) "\2c\01\00\00\30\00\00\00")
  (data (i32.const 200) "start\n")
  (data (i32.const 300) "a log line from a wasm module, printed at once.\n")
  (func (export "_start") (local $i i32)
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const @LINES@)))
        (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))
