//! The editing methods and the denoising branches they step: every method runs a
//! reconstruction and a translation, so a branch is a method × a role. This module sits at
//! the bottom of the engine (errors and events name branches), so it imports nothing.

use serde::{Deserialize, Serialize};

/// The editing method of the main (translation) branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// MirrorDiffusion: redescribed reconstruction + attention-guided translation.
    Mirror,
    /// Plain DDIM inversion and sampling (reconstruction and translation).
    Ddim,
    /// pix2pix-zero: reference pass, then attention-guided edit pass.
    Pix2PixZero,
}

impl Method {
    /// Every method: Mirror, plain DDIM, pix2pix-zero.
    pub const ALL: [Method; 3] = [Method::Mirror, Method::Ddim, Method::Pix2PixZero];

    /// The method's name on the command line and in recipes (`mirror`, `ddim`, `pix2pix-zero`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Mirror => "mirror",
            Method::Ddim => "ddim",
            Method::Pix2PixZero => "pix2pix-zero",
        }
    }

    /// The branch that should reproduce the input image.
    pub const fn reconstruction(self) -> Branch {
        Branch {
            method: self,
            role: Role::Reconstruction,
        }
    }

    /// The branch that turns the image into the target prompt.
    pub const fn translation(self) -> Branch {
        Branch {
            method: self,
            role: Role::Translation,
        }
    }

    /// The method's two branches, reconstruction first (the order its steps return them).
    pub const fn branches(self) -> [Branch; 2] {
        [self.reconstruction(), self.translation()]
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown method `{s}` (expected mirror, ddim or pix2pix-zero)"))
    }
}

/// What a branch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Denoises towards the source caption: it should mirror the inversion.
    Reconstruction,
    /// Denoises with the edit: the translated image.
    Translation,
}

/// One denoising branch: a method's reconstruction or translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Branch {
    /// The method that steps the branch.
    pub method: Method,
    /// Whether it reconstructs or translates.
    pub role: Role,
}

impl Branch {
    /// Every branch, in display order: Mirror, pix2pix-zero, then plain DDIM (the baseline).
    pub const ALL: [Branch; 6] = [
        Method::Mirror.reconstruction(),
        Method::Mirror.translation(),
        Method::Pix2PixZero.reconstruction(),
        Method::Pix2PixZero.translation(),
        Method::Ddim.reconstruction(),
        Method::Ddim.translation(),
    ];

    /// The branch's name in the display (e.g. "Mirror translation").
    pub fn label(self) -> &'static str {
        match (self.method, self.role) {
            (Method::Mirror, Role::Reconstruction) => "Mirror reconstruction",
            (Method::Mirror, Role::Translation) => "Mirror translation",
            (Method::Ddim, Role::Reconstruction) => "DDIM reconstruction",
            (Method::Ddim, Role::Translation) => "DDIM translation",
            (Method::Pix2PixZero, Role::Reconstruction) => "pix2pix-zero reconstruction",
            (Method::Pix2PixZero, Role::Translation) => "pix2pix-zero translation",
        }
    }

    /// The branch as an error message names it ("the translation"); Mirror's branches are
    /// the plain ones, the others say which method they belong to.
    pub fn user_words(self) -> &'static str {
        match (self.method, self.role) {
            (Method::Mirror, Role::Reconstruction) => "the reconstruction",
            (Method::Mirror, Role::Translation) => "the translation",
            (Method::Ddim, Role::Reconstruction) => "the plain DDIM reconstruction",
            (Method::Ddim, Role::Translation) => "the plain DDIM translation",
            (Method::Pix2PixZero, Role::Reconstruction) => "the pix2pix-zero reconstruction",
            (Method::Pix2PixZero, Role::Translation) => "the pix2pix-zero translation",
        }
    }

    /// Whether this is a reconstruction branch.
    pub fn is_reconstruction(self) -> bool {
        self.role == Role::Reconstruction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_branch_per_role() {
        for method in Method::ALL {
            let [rec, edit] = method.branches();
            assert_eq!((rec.method, rec.role), (method, Role::Reconstruction));
            assert_eq!((edit.method, edit.role), (method, Role::Translation));
            assert!(Branch::ALL.contains(&rec) && Branch::ALL.contains(&edit));
        }
    }
}
