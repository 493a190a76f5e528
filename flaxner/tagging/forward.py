"""The model's forward compiled over the local devices (data-parallel rows), with the batch shapes it runs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from flaxner.config import TagConfig
from flaxner.tagging.packing import rows_per_batch, small_rows
from flaxner.tagging.windows import averages, scatter


class CompiledForward:
    """The model and its head's scores (`flaxner.models.heads.tag_scores`) jitted, one compile per shape.

    `fn` is the program every batch runs, `fn(params, input_ids, attention_mask)` with `params` this object's
    (device-placed) `params` and int32 [rows, length] ids and mask; it returns int32 label ids and float32 scores,
    each [rows, length], when `cfg.aggregation` is "first" (and one context view), else float32 probabilities
    [rows, length, labels].
    A caller may replace `fn` with another function of that contract, e.g. a stand-in model that costs nothing,
    to time the host-side work around it (bench.tag_host); `run`, `precompile` and `compile_ahead` call whatever
    it holds. It should be `jax.jit`-compiled (`compile_ahead`, used when `tag.compile_workers` is not 0, calls
    `fn.lower(...)`). `shapes` counts the batch shapes run, whichever `fn` ran them."""

    def __init__(self, model, params, cfg: TagConfig, pad_id: int):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        from flaxner.models.heads import tag_scores
        from flaxner.models.masks import pack_length_for
        from flaxner.models.matmul import bf16_kernels

        self.cfg, self.pad_id = cfg, pad_id
        devices = jax.local_devices()
        self.n_devices = len(devices)
        mesh = Mesh(np.array(devices), ("data",))
        data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        if cfg.dtype == "mixed":  # the model's products are bfloat16 into float32 (flaxner.models.matmul)
            params = bf16_kernels(params)
        elif cfg.dtype != "float32":
            params = jax.tree.map(lambda x: x.astype(cfg.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                  params)
        self.params = jax.device_put(params, repl)
        # Several context views or sentence cuts add up probabilities (`windows.averages`), whatever the words read.
        aggregation = "average" if averages(cfg) else cfg.aggregation
        # Windows share rows of this length (`tagging.packing`; 0: one window a row), the mask then holding
        # segment ids; a model that mixes neighbouring tokens outside attention cannot.
        self.pack_length = pack_length_for(model, cfg.pack_length)
        packed = self.pack_length > 0

        def forward(params, input_ids, attention_mask):
            if packed:
                logits = model(input_ids, params=params, segment_ids=attention_mask).logits
            else:
                logits = model(input_ids, attention_mask, params=params, train=False).logits  # [batch, seq, labels]
            return tag_scores(logits, aggregation)

        self.fn = jax.jit(forward, in_shardings=(repl, data, data), out_shardings=data)
        self.data_sharding = data
        self.shapes: set[tuple[int, int]] = set()
        self.compiled_ahead = 0  # shapes compiled on the compile threads

    @property
    def max_compiles(self) -> int:
        """The bound on the shapes run: a full and a small batch shape per row length."""
        return 2 * len(self.lengths())

    def lengths(self, buckets: Iterable[int] | None = None) -> list[int]:
        """The row lengths batches of these buckets (default: all) run at: with packed rows, the packed length
        for the buckets up to it."""
        p = self.pack_length
        return sorted({p if b <= p else b for b in (self.cfg.buckets if buckets is None else buckets)})

    def batch_shapes(self, buckets: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """The full and the small batch shape of each row length (`lengths`), shortest first."""
        out = []
        for b in self.lengths(buckets):
            full = rows_per_batch(b, self.cfg.batch_size, self.cfg.batch_tokens, self.n_devices)
            out += [(n, b) for n in sorted({full, small_rows(full, self.n_devices)}, reverse=True)]
        return out

    def precompile(self, buckets: Iterable[int] | None = None) -> None:
        """Compile the batch shapes of these buckets (default: all) now."""
        import jax

        for shape in self.batch_shapes(buckets):
            ids = np.full(shape, self.pad_id, dtype=np.int32)
            self.shapes.add(shape)
            jax.block_until_ready(self.fn(self.params, ids, np.zeros_like(ids)))

    def compile_ahead(self):
        """A `Precompiler` working through the shapes not compiled yet (`tag.compile_workers` threads)."""
        import jax

        from flaxner.precompile import Precompiler, workers_for
        from flaxner.runtime import abstract

        pre = Precompiler(workers_for(self.cfg.compile_workers, jax.local_devices()[0].platform))
        if pre.workers:
            params = abstract(self.params)
            for shape in self.batch_shapes():
                if shape not in self.shapes:
                    spec = jax.ShapeDtypeStruct(shape, np.int32, sharding=self.data_sharding)
                    pre.submit(shape, self.fn, params, spec, spec)
        return pre

    def run(self, ids: np.ndarray, mask: np.ndarray, pre):
        """Start one batch (asynchronously); a shape not seen yet is taken from the compile threads' queue."""
        if ids.shape not in self.shapes:
            pre.claim(ids.shape)
            self.shapes.add(ids.shape)
        return self.fn(self.params, ids, mask)

    @staticmethod
    def collect(out, rows) -> None:
        """Copy a finished batch's predictions into the documents of its rows."""
        if isinstance(out, tuple):
            pred, score = (np.asarray(x) for x in out)
        else:
            pred, score = np.asarray(out), None
        for row in rows:
            r, a = row.slot, row.offset
            scatter(row, pred[r, a:], None if score is None else score[r, a:])
