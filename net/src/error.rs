//! How an error is shown: each layer's message says what failed at that layer and carries
//! its cause as the error's `source`, never in its own text; [`Chain`] then shows the
//! whole chain once, outermost first, joined by ": ".

use std::error::Error;
use std::fmt;

/// Shows an error and every cause under it: `cannot read manifest vm.yaml: No such file or
/// directory (os error 2)`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read manifest {0}")]
    struct Read(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Wrapper(#[from] Read);

    #[test]
    fn every_layer_is_shown_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Wrapper::from(Read("vm.yaml", io));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot read manifest vm.yaml: No such file or directory (os error 2)"
        );
    }
}
