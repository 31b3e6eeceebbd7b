//! x86_64 specifics: the address map, CPUID, boot registers and ACPI tables.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod regs;
