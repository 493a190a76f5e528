"""Tagging in parts: `checks` (the TagConfig and label maps accepted), `forward` (the compiled forward, its batch
shapes and compiles), `pipeline` (tokenize on a thread, pack, forward, entities in input order), `filejob` (one
file in, one file out, resumable), `reading` and `lines` (input lines and records, what --resume checks of the
input, document boundaries), `writing` and `formats` (output lines, locks, the part-file writer, output formats;
none of these imports JAX) and `options` (the tag command's option table). `flaxner.tagging.tagger.Tagger` puts
them together; aggregation is `flaxner.tagging.windows`."""
