//! Library target so `aya-build` can find this package through cargo metadata;
//! the programs live in `main.rs`.
#![no_std]
