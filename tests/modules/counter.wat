;; Prints 0, 1, 2, ... 99999 (one line each) on stdout and the same numbers on stderr, alternating,
;; as fast as it can (one fd_write per line), then exits 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; writes the decimal digits of $n and a newline so that they end at byte 199; iovec at 0
  (func $line (param $fd i32) (param $n i32) (local $p i32)
    (i32.store8 (i32.const 199) (i32.const 10))
    (local.set $p (i32.const 199))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $n) (i32.const 0))))
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (i32.sub (i32.const 200) (local.get $p)))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $i i32)
    (loop $next
      (call $line (i32.const 1) (local.get $i))
      (call $line (i32.const 2) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 100000))))))
