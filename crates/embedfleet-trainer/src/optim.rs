//! AdamW with decoupled weight decay (torch.optim.AdamW's update, betas 0.9/0.999, eps 1e-8), no
//! decay on biases and LayerNorm weights, gradient-norm clipping, and the linear warm-up then
//! linear decay schedule of transformers' `get_linear_schedule_with_warmup`. Written here, not taken
//! from tch, so the state is plain named tensors that checkpoints save and resume restores.

use tch::{Kind, Tensor};

/// Everything but the learning rate, which the schedule passes to each [`AdamW::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { weight_decay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, max_grad_norm: 1.0 }
    }
}

/// A checkpoint's optimizer state that lacks a parameter's moment (written for another model).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("optimizer state lacks {0}")]
pub struct MissingMoment(pub String);

pub struct AdamW {
    config: AdamWConfig,
    /// (name, parameter, first moment, second moment, decays)
    params: Vec<(String, Tensor, Tensor, Tensor, bool)>,
    pub step: i64,
}

/// Whether a parameter is decayed: not biases and norm weights, by transformers 5's Trainer rule
/// (`get_decay_parameter_names`, on the lowercased name: "bias", "layernorm" or "rmsnorm" anywhere, a
/// segment named `norm` or ending in `_norm`), so RMSNorm and ModernBERT's `attn_norm` are spared too.
pub fn decays(name: &str) -> bool {
    let name = name.to_lowercase();
    let norm_segment = name.split('.').any(|s| s == "norm" || s.ends_with("_norm"));
    !(name.contains("bias") || name.contains("layernorm") || name.contains("rmsnorm") || norm_segment)
}

impl AdamW {
    pub fn new(named: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let mut named = named;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, p)| {
                let m = p.zeros_like();
                let v = p.zeros_like();
                let d = decays(&name);
                (name, p, m, v, d)
            })
            .collect();
        Self { config, params, step: 0 }
    }

    /// Clips the global gradient norm, then applies one update at learning rate `lr`.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, lr: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p, ..)| p.grad()).collect();
        let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        let total = if defined.is_empty() {
            0.0
        } else {
            let norms: Vec<Tensor> = defined.iter().map(|g| g.norm().to_kind(Kind::Double)).collect();
            f64::try_from(Tensor::stack(&norms, 0).norm()).unwrap_or(0.0)
        };
        let clip = (self.config.max_grad_norm / (total + 1e-6)).min(1.0);
        self.step += 1;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        // In place, as torch.optim.AdamW's single-tensor path: a step holds at most one temporary the
        // size of one parameter (Qwen3-Embedding's 151,669 × 1,024 embedding table is 620 MB in fp32),
        // not five.
        for ((_, p, m, v, decay), g) in self.params.iter_mut().zip(&grads) {
            if !g.defined() {
                continue;
            }
            let mut g = g.shallow_clone();
            if clip < 1.0 {
                // clip_grad_norm_ scales the gradients themselves; zero_grad clears them next.
                let _ = g.g_mul_scalar_(clip);
            }
            if *decay && c.weight_decay > 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = m.lerp_(&g, 1.0 - c.beta1);
            let _ = v.g_mul_scalar_(c.beta2).addcmul_(&(&g * (1.0 - c.beta2)), &g);
            let mut denom = v.sqrt();
            let _ = denom.g_div_scalar_(bias2.sqrt()).g_add_scalar_(c.eps).g_div_scalar_(-lr / bias1);
            let _ = p.addcdiv_(m, &denom);
        }
        total
    }

    pub fn zero_grad(&mut self) {
        for (_, p, ..) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|(name, _, m, v, _)| [(format!("m.{name}"), m.shallow_clone()), (format!("v.{name}"), v.shallow_clone())])
            .collect()
    }

    pub fn load_state(&mut self, tensors: &[(String, Tensor)], step: i64) -> Result<(), MissingMoment> {
        let find = |key: String| tensors.iter().find(|(n, _)| *n == key).map(|(_, t)| t).ok_or(MissingMoment(key));
        let _guard = tch::no_grad_guard();
        for (name, _, m, v, _) in &mut self.params {
            m.copy_(find(format!("m.{name}"))?);
            v.copy_(find(format!("v.{name}"))?);
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up from 0 over `warmup` steps, then linear decay to 0 at `total`.
pub fn linear_schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    ((total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let (warmup, total) = (10, 100);
        assert_eq!(linear_schedule(0, warmup, total), 0.0);
        assert_eq!(linear_schedule(5, warmup, total), 0.5);
        assert_eq!(linear_schedule(10, warmup, total), 1.0);
        assert_eq!(linear_schedule(55, warmup, total), 0.5);
        assert_eq!(linear_schedule(100, warmup, total), 0.0);
        assert_eq!(linear_schedule(0, 0, 10), 1.0);
    }

    #[test]
    fn one_adamw_step_matches_the_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("w".into(), p.shallow_clone()), ("dense.bias".into(), b.shallow_clone())],
            AdamWConfig { max_grad_norm: 1e9, ..Default::default() },
        );
        (p.pow_tensor_scalar(2).sum(Kind::Float) + b.sum(Kind::Float) * 3.0).backward();
        opt.step(0.1);
        // First step of Adam moves each weight by lr * sign(grad) (up to eps); w also decays.
        let w: Vec<f32> = Vec::try_from(&p).unwrap();
        assert!((w[0] as f64 - (1.0 * (1.0 - 0.1 * 0.01) - 0.1)).abs() < 1e-6, "{w:?}");
        assert!((w[1] as f64 - (-2.0 * (1.0 - 0.1 * 0.01) + 0.1)).abs() < 1e-6, "{w:?}");
        let bias = f64::try_from(&b).unwrap();
        assert!((bias - (0.5 - 0.1)).abs() < 1e-6, "bias is not decayed: {bias}");
        assert!(!decays("encoder.layer.0.output.LayerNorm.weight") && decays("encoder.layer.0.output.dense.weight"));
    }

    #[test]
    fn norms_of_every_family_are_not_decayed() {
        // transformers' Trainer spares these (its patterns on the lowercased name); matrices decay.
        for name in [
            "encoder.layer.0.attention.output.LayerNorm.weight",
            "encoder.layer.0.attention.self.query.bias",
            "encoder.relative_attention_bias.weight",
            "layers.0.attn_norm.weight",
            "embeddings.norm.weight",
            "final_norm.weight",
            "layers.3.input_layernorm.weight",
            "layers.3.post_attention_layernorm.weight",
            "layers.3.self_attn.q_norm.weight",
            "layers.3.self_attn.k_norm.weight",
            "norm.weight",
        ] {
            assert!(!decays(name), "{name} is decayed");
        }
        for name in [
            "layers.3.self_attn.q_proj.weight",
            "layers.3.mlp.gate_proj.weight",
            "embed_tokens.weight",
            "layers.0.attn.Wqkv.weight",
            "normalizer.weight",
        ] {
            assert!(decays(name), "{name} is not decayed");
        }
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], AdamWConfig::default());
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        assert!((opt.step(1e-3) - 5.0).abs() < 1e-6);
    }
}
