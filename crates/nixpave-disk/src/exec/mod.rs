//! The executor: probes a machine through a [`nixpave_remote::Transport`], evaluates guards and
//! runs a [`crate::Plan`].
