;; CPU-bound and deterministic: prints "start", runs @ITERATIONS@ rounds of xorshift64 and a
;; multiply-accumulate, prints "checksum <16 hex digits>" and exits 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "start\n")
  (data (i32.const 200) "checksum 0000000000000000\n")
  (data (i32.const 300) "0123456789abcdef")
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func (export "_start") (local $i i64) (local $x i64) (local $sum i64) (local $k i32)
    (call $print (i32.const 100) (i32.const 6))
    (local.set $x (i64.const 88172645463325252))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (i64.const @ITERATIONS@)))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $sum (i64.add (local.get $sum) (i64.mul (local.get $x) (i64.or (local.get $i) (i64.const 1)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.set $k (i32.const 15))
    (loop $hex
      (i32.store8 (i32.add (i32.const 209) (local.get $k))
        (i32.load8_u (i32.add (i32.const 300) (i32.wrap_i64 (i64.and (local.get $sum) (i64.const 15))))))
      (local.set $sum (i64.shr_u (local.get $sum) (i64.const 4)))
      (local.set $k (i32.sub (local.get $k) (i32.const 1)))
      (br_if $hex (i32.ge_s (local.get $k) (i32.const 0))))
    (call $print (i32.const 200) (i32.const 26))))
