"""Tagging in parts: `checks` (the TagConfig and label maps accepted), `forward` (the compiled forward, its batch
shapes and compiles), `pipeline` (tokenize on a thread, pack, forward, entities in input order), `filejob` (one
file in, one file out, resumable), `reading` (input lines and records, what --resume checks of the input) and
`writing` (output lines, locks, the part-file writer; neither of the two imports JAX). `flaxner.tagging.tagger.Tagger` puts
them together; aggregation is `flaxner.tagging.windows`."""
