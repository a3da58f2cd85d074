//! Steering vectors: the difference of two prompts' activations at one site, and a hook that adds
//! coef × that vector to the site's activation at every position of every decoding step (the
//! chapter's TransformerLens hook, `activation += coef * vector` on e.g. `blocks.10.hook_attn_out`).
use crate::backend::float_options;
use crate::model::{Cache, Transformer, Hooks, Site, SiteKind};
use anyhow::{bail, ensure, Result};
use burn::prelude::*;

/// A vector for one site, on the host: `values` has the shape of one position's activation there
/// ([d_model] at residual-shaped sites, [heads, d_head] at q, k, v and z).
#[derive(Clone, Debug, PartialEq)]
pub struct SteeringVector {
    pub site: Site,
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
    pub coef: f32,
}

/// The shape of one position's activation at `site`; an error for a site without one.
pub fn position_shape<B: Backend>(model: &Transformer<B>, site: Site) -> Result<Vec<usize>> {
    let c = &model.config;
    ensure!(site.layer < c.layers, "layer {} is outside the model's {} layers", site.layer, c.layers);
    c.check_site(site.kind)?;
    Ok(match site.kind {
        SiteKind::ResidPre | SiteKind::ResidMid | SiteKind::ResidPost | SiteKind::AttnOut | SiteKind::MlpOut | SiteKind::MlpIn | SiteKind::Embed => vec![c.d_model],
        SiteKind::Q | SiteKind::Z | SiteKind::K | SiteKind::V | SiteKind::KHead | SiteKind::VHead => vec![c.heads_of(site.kind), c.d_head],
        SiteKind::Pattern => bail!("pattern has no per-position vector to steer with: choose a residual-shaped site or q, k, v, z"),
    })
}

/// `clean`'s activation at `site` and `position` minus `corrupted`'s (a negative position counts
/// from each prompt's end, so prompts of different lengths compare their last tokens).
pub fn make<B: Backend>(model: &Transformer<B>, clean: &[u32], corrupted: &[u32], site: Site, position: i64) -> Result<(Vec<f32>, Vec<usize>)> {
    let shape = position_shape(model, site)?;
    let at = |tokens: &[u32], which: &str| -> Result<Vec<f32>> {
        let len = tokens.len() as i64;
        let p = if position < 0 { len + position } else { position };
        ensure!((0..len).contains(&p), "position {position} is outside the {which} prompt's {len} tokens");
        let mut cache = Cache::new([site]);
        model.resid_final(model.tokens(&[tokens.to_vec()])?, &mut cache);
        let act = cache.heads(site).expect("recorded").narrow(1, p as usize, 1);
        Ok(act.into_data().convert::<f32>().to_vec().expect("f32"))
    };
    let (c, r) = (at(clean, "clean")?, at(corrupted, "corrupted")?);
    Ok((c.iter().zip(&r).map(|(a, b)| a - b).collect(), shape))
}

/// The steering hook on a device: adds coef × vector at its site, every row and position.
pub struct Steer<B: Backend> {
    site: Site,
    /// coef × vector, [1, 1, ..shape] flattened.
    add: Tensor<B, 1>,
    shape: Vec<usize>,
}

impl<B: Backend> Steer<B> {
    pub fn new(model: &Transformer<B>, v: &SteeringVector) -> Result<Self> {
        let want = position_shape(model, v.site)?;
        ensure!(
            v.shape == want,
            "the steering vector has shape {:?}, but {} of this model has {:?} per position",
            v.shape,
            v.site.kind.hook_name(v.site.layer),
            want
        );
        let scaled: Vec<f32> = v.values.iter().map(|x| x * v.coef).collect();
        let add = Tensor::from_data(TensorData::new(scaled, [v.values.len()]), float_options::<B>(&model.device()));
        Ok(Self { site: v.site, add, shape: v.shape.clone() })
    }
}

impl<B: Backend> Hooks<B> for Steer<B> {
    fn hook<const D: usize>(&mut self, site: Site, _segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        if site != self.site {
            return act;
        }
        let mut dims = [1usize; D];
        dims[2..].copy_from_slice(&self.shape);
        act + self.add.clone().reshape(dims)
    }

    fn wants(&self, site: Site) -> bool {
        site == self.site
    }
}

/// The steering hook of an optional vector (none: the plain forward pass).
pub fn hooks<B: Backend>(model: &Transformer<B>, v: Option<&SteeringVector>) -> Result<Option<Steer<B>>> {
    v.map(|v| Steer::new(model, v)).transpose()
}
