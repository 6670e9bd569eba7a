//! `Decoder`: the dense decoder-only transformer every registered architecture describes with
//! a [`ModelSpec`], loaded from a [`TensorSource`] and run through a [`Backend`]. One ragged
//! batched forward covers every token of a step: linear layers see all T tokens at once (q/k/v
//! and gate/up fused), RoPE uses each token's own position (one table per distinct RoPE per
//! step), attention runs per sequence against its paged context with the layer's own kind
//! (full or sliding window), and the final norm and LM head run only for the rows whose logits
//! are wanted (a 262k vocabulary costs nothing for prompt rows). Embedding models stop before
//! the LM head: [`Decoder::hidden_states`] returns the final-normed rows instead of logits.
//!
//! Per layer: `h = norm(x)`; `q, k, v = split(W_qkv h + b)`; optional per-head q/k norms;
//! RoPE; `a = W_o attention(q, k, v)`; optional post-norm of `a`; `x += a`; then
//! `m = W_down act(W_gate h') * (W_up h')` with `h' = norm(x)`, optional post-norm, `x += m`.
//!
//! Mixture-of-experts models (gpt-oss) replace the MLP by a router (`W_r h' + b_r`) and the
//! backend's `moe` over per-expert gate/up and down layers; their attention may add a sink
//! logit per head to every softmax.

use std::sync::Mutex;

use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::{AttentionKind, AttnParams, KvLayout};
use crate::model::backend::{Backend, RawWeight};
use crate::model::source::TensorSource;
use crate::model::spec::{ModelSpec, MoeSpec};
use crate::model::ModelConfig;
use crate::{EngineError, Result};

/// One decoder layer's weights.
struct Layer<B: Backend> {
    attn_norm: B::Norm,
    /// Fused `[q; k; v]`.
    qkv: B::Linear,
    q_norm: Option<B::Norm>,
    k_norm: Option<B::Norm>,
    o: B::Linear,
    attn_post_norm: Option<B::Norm>,
    /// One logit per head joining the attention softmax (gpt-oss).
    sinks: Option<B::Sinks>,
    ffn_norm: B::Norm,
    ffn: Ffn<B>,
    ffn_post_norm: Option<B::Norm>,
}

/// A layer's feed-forward.
enum Ffn<B: Backend> {
    /// Fused `[gate; up]`, then down.
    Dense { gate_up: B::Linear, down: B::Linear },
    /// A router (`[experts, hidden]`, with its bias) and per expert `(gate_up, down)`.
    Moe { router: B::Linear, experts: Vec<(B::Linear, B::Linear)> },
}

/// A loaded model ready to run ragged batches.
pub struct Decoder<B: Backend> {
    backend: B,
    spec: ModelSpec,
    config: ModelConfig,
    embed: B::Embedding,
    layers: Vec<Layer<B>>,
    norm: B::Norm,
    lm_head: B::Linear,
    /// Buffers of the forward pass (one pass at a time: the engine thread owns the model).
    scratch: Mutex<Scratch<B>>,
}

/// Activation buffers of one forward pass, reused from layer to layer and step to step.
struct Scratch<B: Backend> {
    /// Residual stream `[T, hidden]`.
    x: B::Act,
    /// Normed input of the current block.
    h: B::Act,
    /// Fused projection outputs, each in a buffer of its own so that neither is resized (and
    /// zero-filled) every layer: qkv, and gate/up (or the MoE router's logits).
    proj: B::Act,
    gate_up: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    att: B::Act,
    act: B::Act,
    /// Block output, added into `x`.
    out: B::Act,
}

impl<B: Backend> Default for Scratch<B> {
    fn default() -> Self {
        Self {
            x: B::Act::default(),
            h: B::Act::default(),
            proj: B::Act::default(),
            gate_up: B::Act::default(),
            q: B::Act::default(),
            k: B::Act::default(),
            v: B::Act::default(),
            att: B::Act::default(),
            act: B::Act::default(),
            out: B::Act::default(),
        }
    }
}

/// Reads tensors by role and checks their shapes.
struct Reader<'a, S: TensorSource> {
    src: &'a mut S,
    spec: &'a ModelSpec,
}

impl<S: TensorSource> Reader<'_, S> {
    fn has(&self, name: &str) -> bool {
        self.src.shape(name).is_some()
    }

    fn need(&mut self, name: &str, dims: &[usize]) -> Result<RawWeight> {
        let shape = self.src.shape(name).ok_or_else(|| EngineError::Load(format!("missing tensor {name}")))?;
        if shape != dims {
            return Err(EngineError::Load(format!("tensor {name} has shape {shape:?}, the config implies {dims:?}")));
        }
        self.src.read(name)?.ok_or_else(|| EngineError::Load(format!("missing tensor {name}")))
    }

    /// The bias of layer `i`'s `role`, if stored (any of these architectures may carry one).
    fn bias(&mut self, i: usize, role: &str, n: usize) -> Result<Option<RawWeight>> {
        let name = self.spec.names.layer_tensor(i, role, true);
        if self.has(&name) {
            return Ok(Some(self.need(&name, &[n])?));
        }
        Ok(None)
    }

    fn weight(&mut self, i: usize, role: &str, dims: &[usize]) -> Result<RawWeight> {
        self.need(&self.spec.names.layer_tensor(i, role, false), dims)
    }

    /// A stacked bias (`[experts, n]`), if stored.
    fn biases(&mut self, i: usize, role: &str, dims: &[usize]) -> Result<Option<RawWeight>> {
        let name = self.spec.names.layer_tensor(i, role, true);
        if self.has(&name) {
            return Ok(Some(self.need(&name, dims)?));
        }
        Ok(None)
    }
}

/// Loads layer `i`'s mixture of experts: the router and, per expert, fused `[gate; up]` and
/// down with their biases. Stacked weights are split expert by expert (each expert's bytes
/// copied once, the stacked tensor dropped after the layer).
fn load_moe<B: Backend, S: TensorSource>(backend: &B, r: &mut Reader<S>, i: usize, moe: MoeSpec) -> Result<Ffn<B>> {
    let names = r.spec.names;
    let (ne, ff, hidden) = (moe.num_experts, moe.expert_ff, r.spec.hidden_size);
    let router = backend.router(r.weight(i, names.router, &[ne, hidden])?, r.bias(i, names.router, ne)?)?;
    let gate = r.weight(i, names.gate_exps, &[ne, ff, hidden])?;
    let up = r.weight(i, names.up_exps, &[ne, ff, hidden])?;
    let down = r.weight(i, names.down_exps, &[ne, hidden, ff])?;
    let gate_b = r.biases(i, names.gate_exps, &[ne, ff])?;
    let up_b = r.biases(i, names.up_exps, &[ne, ff])?;
    let down_b = r.biases(i, names.down_exps, &[ne, hidden])?;
    let one = |b: &Option<RawWeight>, e: usize| b.as_ref().map(|b| b.expert(e)).transpose();
    let mut experts = Vec::with_capacity(ne);
    for e in 0..ne {
        let gate_up = backend.linear(vec![gate.expert(e)?, up.expert(e)?], vec![one(&gate_b, e)?, one(&up_b, e)?])?;
        let down = backend.linear(vec![down.expert(e)?], vec![one(&down_b, e)?])?;
        experts.push((gate_up, down));
    }
    Ok(Ffn::Moe { router, experts })
}

impl<B: Backend> Decoder<B> {
    /// Loads every weight `spec` names from `src` onto `backend`.
    pub fn load<S: TensorSource>(backend: B, spec: ModelSpec, src: &mut S) -> Result<Self> {
        let (hidden, hd, ff) = (spec.hidden_size, spec.head_dim, spec.intermediate_size);
        let (qw, kw) = (spec.num_heads * hd, spec.num_kv_heads * hd);
        let names = spec.names;
        let eps = spec.rms_norm_eps;
        let offset = spec.norm_weight_offset;
        let mut r = Reader { src, spec: &spec };
        let embed_raw = r.need(&names.global(names.embed), &[spec.vocab_size, hidden])?;
        // A tied embedding (no `output` tensor) becomes the LM head right away, sharing its
        // storage where the backend can; a separate `output` tensor is read after the layers.
        let output = names.global(names.output);
        let (embed, tied_head) = if r.has(&output) {
            (backend.embedding(&embed_raw)?, None)
        } else {
            let (embed, head) = backend.tied_embedding(embed_raw)?;
            (embed, Some(head))
        };
        let mut layers = Vec::with_capacity(spec.num_layers());
        for i in 0..spec.num_layers() {
            let norm = |r: &mut Reader<S>, role: &str, n: usize| -> Result<B::Norm> {
                backend.norm(r.weight(i, role, &[n])?, eps, offset)
            };
            let qkv = if r.has(&names.layer_tensor(i, names.qkv, false)) {
                let w = r.weight(i, names.qkv, &[qw + 2 * kw, hidden])?;
                let b = r.bias(i, names.qkv, qw + 2 * kw)?;
                backend.linear(vec![w], vec![b])?
            } else {
                let parts = vec![
                    r.weight(i, names.q, &[qw, hidden])?,
                    r.weight(i, names.k, &[kw, hidden])?,
                    r.weight(i, names.v, &[kw, hidden])?,
                ];
                let biases = vec![r.bias(i, names.q, qw)?, r.bias(i, names.k, kw)?, r.bias(i, names.v, kw)?];
                backend.linear(parts, biases)?
            };
            let ffn = match spec.moe {
                Some(moe) => load_moe(&backend, &mut r, i, moe)?,
                None => {
                    let gate_up = match names.gate_up {
                        Some(gu) if r.has(&names.layer_tensor(i, gu, false)) => {
                            backend.linear(vec![r.weight(i, gu, &[2 * ff, hidden])?], vec![None])?
                        }
                        _ if !r.has(&names.layer_tensor(i, names.gate, false)) => {
                            // GGUF phi3: `ffn_up` holds [gate; up].
                            backend.linear(vec![r.weight(i, names.up, &[2 * ff, hidden])?], vec![None])?
                        }
                        _ => backend.linear(
                            vec![r.weight(i, names.gate, &[ff, hidden])?, r.weight(i, names.up, &[ff, hidden])?],
                            vec![None, None],
                        )?,
                    };
                    let down = backend.linear(vec![r.weight(i, names.down, &[hidden, ff])?], vec![None])?;
                    Ffn::Dense { gate_up, down }
                }
            };
            let sinks = if spec.attn_sinks {
                Some(backend.sinks(r.need(&names.layer_raw(i, names.sinks), &[spec.num_heads])?)?)
            } else {
                None
            };
            let post = |r: &mut Reader<S>, role: Option<&str>| -> Result<Option<B::Norm>> {
                match role {
                    Some(role) if spec.post_norms => Ok(Some(norm(r, role, hidden)?)),
                    _ => Ok(None),
                }
            };
            let o_bias = r.bias(i, names.o, hidden)?;
            layers.push(Layer {
                attn_norm: norm(&mut r, names.attn_norm, hidden)?,
                qkv,
                q_norm: if spec.qk_norm { Some(norm(&mut r, names.q_norm, hd)?) } else { None },
                k_norm: if spec.qk_norm { Some(norm(&mut r, names.k_norm, hd)?) } else { None },
                o: backend.linear(vec![r.weight(i, names.o, &[hidden, qw])?], vec![o_bias])?,
                attn_post_norm: post(&mut r, names.attn_post_norm)?,
                sinks,
                ffn_norm: norm(&mut r, names.ffn_norm, hidden)?,
                ffn,
                ffn_post_norm: post(&mut r, names.ffn_post_norm)?,
            });
        }
        let norm = backend.norm(r.need(&names.global(names.output_norm), &[hidden])?, eps, offset)?;
        let lm_head = match tied_head {
            Some(head) => head,
            None => backend.linear(vec![r.need(&output, &[spec.vocab_size, hidden])?], vec![None])?,
        };
        let layer_kinds: Vec<AttentionKind> = spec.layers.iter().map(|l| l.attention).collect();
        let config = ModelConfig {
            arch: spec.arch,
            vocab_size: spec.vocab_size,
            hidden_size: hidden,
            num_layers: spec.num_layers(),
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: hd,
            max_position_embeddings: spec.max_position_embeddings,
            kv_layout: KvLayout::new(&layer_kinds, spec.num_kv_heads, hd),
        };
        Ok(Self { backend, spec, config, embed, layers, norm, lm_head, scratch: Mutex::new(Scratch::default()) })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn check(&self, batch: &ForwardBatch) -> Result<()> {
        if let Some(&id) = batch.input_ids.iter().find(|&&id| id as usize >= self.spec.vocab_size) {
            return Err(EngineError::InvalidRequest(format!("token id {id} is outside the vocabulary")));
        }
        if let Some(&r) = batch.logits_rows.iter().find(|&&r| r >= batch.num_tokens()) {
            return Err(EngineError::InvalidRequest(format!("logits row {r} is outside the batch")));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= self.spec.max_position_embeddings) {
            return Err(EngineError::InvalidRequest(format!(
                "position {p} is beyond the model's context of {}",
                self.spec.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Runs every token of `batch`, writing their K/V into `kv`, and returns f32 logits of
    /// shape `[batch.logits_rows.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut B::Kv) -> Result<Tensor> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let rows = self.run_logits(batch, kv, s)?;
        self.backend.to_tensor(&s.out, rows, self.spec.vocab_size)
    }

    /// [`forward`](Self::forward) with the logits written row-major into `out` (its
    /// allocation reused from step to step) instead of a new tensor.
    pub fn logits_into(&self, batch: &ForwardBatch, kv: &mut B::Kv, out: &mut Vec<f32>) -> Result<()> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let rows = self.run_logits(batch, kv, s)?;
        self.backend.read_rows(&s.out, rows, self.spec.vocab_size, out)
    }

    /// Runs `batch` and leaves the logits of its `logits_rows` in `s.out`; returns how many
    /// rows that is (0 when nothing ran).
    fn run_logits(&self, batch: &ForwardBatch, kv: &mut B::Kv, s: &mut Scratch<B>) -> Result<usize> {
        let (b, spec) = (&self.backend, &self.spec);
        let rows = batch.logits_rows.len();
        if !self.run_layers(batch, kv, s)? || rows == 0 {
            return Ok(0);
        }
        self.final_norm(batch, s);
        b.matmul(&self.lm_head, &s.h, rows, &mut s.out)?;
        if let Some(cap) = spec.final_logit_softcap {
            b.softcap(&mut s.out, cap);
        }
        Ok(rows)
    }

    /// Runs every token of `batch` like [`forward`](Self::forward), and returns the final
    /// hidden states (after the final norm, before the LM head) of `batch.logits_rows`, shape
    /// `[batch.logits_rows.len(), hidden]`: what embedding models pool. No logits are computed.
    pub fn hidden_states(&self, batch: &ForwardBatch, kv: &mut B::Kv) -> Result<Tensor> {
        let (b, spec) = (&self.backend, &self.spec);
        let rows = batch.logits_rows.len();
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if !self.run_layers(batch, kv, s)? || rows == 0 {
            return b.to_tensor(&B::Act::default(), 0, spec.hidden_size);
        }
        self.final_norm(batch, s);
        b.to_tensor(&s.h, rows, spec.hidden_size)
    }

    /// The final norm of the `logits_rows` of the residual stream, into `s.h`.
    fn final_norm(&self, batch: &ForwardBatch, s: &mut Scratch<B>) {
        let b = &self.backend;
        b.gather_rows(&s.x, &batch.logits_rows, self.spec.hidden_size, &mut s.act);
        b.rms_norm(&self.norm, &s.act, &mut s.h);
    }

    /// Embeds `batch` and runs every layer, leaving the residual stream in `s.x`; false when
    /// the batch has no tokens (nothing ran).
    fn run_layers(&self, batch: &ForwardBatch, kv: &mut B::Kv, s: &mut Scratch<B>) -> Result<bool> {
        self.check(batch)?;
        let (b, spec) = (&self.backend, &self.spec);
        let t = batch.num_tokens();
        b.validate(kv, batch)?;
        if t == 0 {
            return Ok(false);
        }
        let ropes: Vec<_> = spec.ropes.iter().map(|r| r.rows(&batch.positions)).collect();
        let (hd, qw, kw) = (spec.head_dim, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
        b.embed(&self.embed, &batch.input_ids, spec.embed_scale, &mut s.x)?;
        for (l, (layer, ls)) in self.layers.iter().zip(&spec.layers).enumerate() {
            b.rms_norm(&layer.attn_norm, &s.x, &mut s.h);
            b.matmul(&layer.qkv, &s.h, t, &mut s.proj)?;
            b.split3(&s.proj, [qw, kw, kw], [&mut s.q, &mut s.k, &mut s.v]);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                b.rms_norm_in_place(qn, &mut s.q);
                b.rms_norm_in_place(kn, &mut s.k);
            }
            b.rope(&mut s.q, &ropes[ls.rope], spec.num_heads, hd);
            b.rope(&mut s.k, &ropes[ls.rope], spec.num_kv_heads, hd);
            let window = match ls.attention {
                AttentionKind::Full => None,
                AttentionKind::Sliding(w) => Some(w),
            };
            let params = AttnParams { scale: spec.attn_scale, window };
            match &layer.sinks {
                Some(sinks) => {
                    b.attention_with_sinks(kv, l, batch, &s.q, &s.k, &s.v, spec.num_heads, params, sinks, &mut s.att)?
                }
                None => b.attention(kv, l, batch, &s.q, &s.k, &s.v, spec.num_heads, params, &mut s.att)?,
            }
            b.matmul(&layer.o, &s.att, t, &mut s.out)?;
            if let Some(n) = &layer.attn_post_norm {
                b.rms_norm_in_place(n, &mut s.out);
            }
            b.add(&mut s.x, &s.out);
            b.rms_norm(&layer.ffn_norm, &s.x, &mut s.h);
            match (&layer.ffn, &spec.moe) {
                (Ffn::Moe { router, experts }, Some(moe)) => {
                    b.matmul(router, &s.h, t, &mut s.gate_up)?;
                    b.moe(experts, moe, spec.activation, &s.h, &s.gate_up, t, &mut s.out)?;
                }
                (Ffn::Dense { gate_up, down }, _) => {
                    b.matmul(gate_up, &s.h, t, &mut s.gate_up)?;
                    b.gated(spec.activation, &s.gate_up, spec.intermediate_size, &mut s.act);
                    b.matmul(down, &s.act, t, &mut s.out)?;
                }
                (Ffn::Moe { .. }, None) => unreachable!("experts are loaded only for a MoE spec"),
            }
            if let Some(n) = &layer.ffn_post_norm {
                b.rms_norm_in_place(n, &mut s.out);
            }
            b.add(&mut s.x, &s.out);
        }
        Ok(true)
    }
}
