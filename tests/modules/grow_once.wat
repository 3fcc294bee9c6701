;; Uses one page, then asks for 64 MiB (1024 pages) in one memory.grow and traps (unreachable)
;; when it gets -1: one large allocation refused far below the limit. Exits 0 when it gets them.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1))
    (if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1))
      (then unreachable))))
