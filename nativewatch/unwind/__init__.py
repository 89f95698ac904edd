"""Unwinding user stacks copied by the BPF side with the mapped objects' call frame information
(CFI: .eh_frame, .debug_frame), for code built without frame pointers."""
