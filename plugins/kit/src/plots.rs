//! Figures: an SVG rendered as PNG beside it, and the heatmap of an architecture found (layers
//! × sites, the prune groups kept of the supernet's: a LoRA's rank), for `nas.report` (one
//! cell) and `petnas report --plots` (the mean over seeds).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

/// Renders an SVG file as PNG beside it (text in the system's fonts).
pub fn png_of(svg: &Path) -> Result<PathBuf> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // Plots ask for `sans-serif`: map it to a font this machine has.
    if let Some(family) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
        .into_iter()
        .find(|f| fonts.faces().any(|face| face.families.iter().any(|(name, _)| name == f)))
    {
        fonts.set_sans_serif_family(family);
    }
    let tree = resvg::usvg::Tree::from_data(&std::fs::read(svg)?, &options)
        .with_context(|| format!("cannot read {}", svg.display()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("empty plot")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let png = svg.with_extension("png");
    pixmap.save_png(&png).with_context(|| format!("cannot write {}", png.display()))?;
    Ok(png)
}

/// One site's square of a heatmap: the prune groups kept and the supernet's there (means
/// where the heatmap summarises seeds).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Square {
    pub layer: i64,
    pub column: usize,
    pub kept: f64,
    pub of: f64,
}

/// What a heatmap shows, as `nas.report` writes it into `architecture.json` (`heatmap`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Heatmap {
    pub title: String,
    pub layers: i64,
    /// Column names (a site's local name: `attention.self.query`), left to right.
    pub columns: Vec<String>,
    pub squares: Vec<Square>,
}

/// The colour of a share kept: white (none) to blue (all).
fn shade(share: f64) -> RGBColor {
    let s = (255.0 * (1.0 - share.clamp(0.0, 1.0))) as u8;
    RGBColor(s, s, 255)
}

/// `3` as `3`, `2.667` as `2.7`: counts and their means.
fn count(x: f64) -> String {
    match (x - x.round()).abs() < 1e-9 {
        true => format!("{x:.0}"),
        false => format!("{x:.1}"),
    }
}

impl Heatmap {
    /// The mean of heatmaps (one per seed) square by square, over those that have the square;
    /// columns in the order they first come.
    pub fn mean(maps: &[Heatmap], title: String) -> Heatmap {
        let mut columns: Vec<String> = Vec::new();
        let mut sums: BTreeMap<(i64, usize), (f64, f64, usize)> = BTreeMap::new();
        for map in maps {
            for square in &map.squares {
                let name = &map.columns[square.column];
                let column = match columns.iter().position(|c| c == name) {
                    Some(c) => c,
                    None => {
                        columns.push(name.clone());
                        columns.len() - 1
                    }
                };
                let sum = sums.entry((square.layer, column)).or_default();
                *sum = (sum.0 + square.kept, sum.1 + square.of, sum.2 + 1);
            }
        }
        let squares = sums
            .into_iter()
            .map(|((layer, column), (kept, of, n))| Square {
                layer,
                column,
                kept: kept / n as f64,
                of: of / n as f64,
            })
            .collect();
        Heatmap { title, layers: maps.iter().map(|m| m.layers).max().unwrap_or(0), columns, squares }
    }

    /// Writes the heatmap as `svg` and as PNG beside it.
    pub fn write(&self, svg: &Path) -> Result<PathBuf> {
        self.draw(svg)?;
        png_of(svg)
    }

    fn draw(&self, path: &Path) -> Result<()> {
        // The column labels stand upright above the squares, under the title and its line.
        let longest = self.columns.iter().map(|c| c.chars().count()).max().unwrap_or(0) as i32;
        let (cell_w, cell_h, left, top) = (70i32, 28i32, 60i32, 60 + 7 * longest);
        // Room on the right for the colour scale, and for the title.
        let scale_x = left + cell_w * self.columns.len().max(1) as i32 + 24;
        let width = ((scale_x + 70) as u32).max(8 * self.title.chars().count() as u32 + 2 * left as u32);
        let height = (top + cell_h * self.layers as i32 + 40) as u32;
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("cannot draw {}: {e}", path.display());
        root.fill(&WHITE).map_err(err)?;
        let style = ("sans-serif", 12).into_font();
        root.draw(&Text::new(self.title.clone(), (left, 8), ("sans-serif", 15).into_font())).map_err(err)?;
        let what = "prune groups kept of the supernet's at each site (LoRA: its rank), shaded by share";
        root.draw(&Text::new(what, (left, 30), style.clone())).map_err(err)?;
        let scale_h = (cell_h * self.layers as i32).max(60);
        for i in 0..scale_h {
            let share = 1.0 - i as f64 / (scale_h - 1).max(1) as f64;
            root.draw(&Rectangle::new(
                [(scale_x, top + i), (scale_x + 14, top + i + 1)],
                shade(share).filled(),
            ))
            .map_err(err)?;
        }
        root.draw(&Rectangle::new([(scale_x, top), (scale_x + 14, top + scale_h)], BLACK.stroke_width(1)))
            .map_err(err)?;
        for (share, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
            let y = top + ((1.0 - share) * (scale_h - 1) as f64) as i32 - 6;
            root.draw(&Text::new(label, (scale_x + 18, y), style.clone())).map_err(err)?;
        }
        for (c, column) in self.columns.iter().enumerate() {
            let x = left + c as i32 * cell_w + cell_w / 2;
            let label =
                Text::new(column.clone(), (x, top - 8), style.clone().transform(FontTransform::Rotate270));
            root.draw(&label).map_err(err)?;
        }
        for layer in 0..self.layers {
            let y = top + layer as i32 * cell_h;
            root.draw(&Text::new(format!("layer {layer}"), (4, y + cell_h / 2 - 6), style.clone()))
                .map_err(err)?;
            for c in 0..self.columns.len() {
                let x = left + c as i32 * cell_w;
                let (fill, label) = match self.squares.iter().find(|s| s.layer == layer && s.column == c) {
                    Some(k) if k.of > 0.0 => {
                        (shade(k.kept / k.of), format!("{}/{}", count(k.kept), count(k.of)))
                    }
                    _ => (RGBColor(230, 230, 230), String::new()),
                };
                root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + cell_h - 2)], fill.filled()))
                    .map_err(err)?;
                if !label.is_empty() {
                    root.draw(&Text::new(label, (x + 12, y + cell_h / 2 - 6), style.clone())).map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
        Ok(())
    }
}
