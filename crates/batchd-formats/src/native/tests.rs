//! Unit tests of the native families: translation and rendering per family.
