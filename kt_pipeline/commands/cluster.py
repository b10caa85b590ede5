"""`kt-pipeline cluster prepare|train|evaluate`: the speaker-clustering workload."""

from __future__ import annotations

NAME = "cluster"
HELP = "speaker clustering of novel quotes: prepare examples, train embeddings, evaluate clusters"
EXAMPLES = """
  # PDNC folder -> plain examples CSV (book, text, speaker, is_narrative, context_*)
  kt-pipeline cluster prepare --pdnc ../shared/data/pdnc --books Emma,Persuasion --output quotes.csv
  # train the anchor loss on five novels (splits are whole books), MiniLM, 300 steps
  kt-pipeline cluster train --data ../shared/data/pdnc --model-dir runs/spk \\
      --set books=Emma,Persuasion,DaisyMiller,TheGambler,AHandfulOfDust --set steps=300 --set window=16
  # SupCon baseline on the same model
  kt-pipeline cluster train --data quotes.csv --model-dir runs/supcon --set loss=supcon
  # scores on held-out books: trained model, untrained encoder, one cluster per book
  kt-pipeline cluster evaluate --model-dir runs/spk --split test
"""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("prepare", help="write the plain examples CSV from a PDNC folder")
    p.add_argument("--pdnc", required=True, help="PDNC folder (one folder per novel)")
    p.add_argument("--books", default=None, help="comma-separated novel folders (default: all)")
    p.add_argument("--narrative-ratio", type=float, default=0.25,
                   help="narrative examples per quote (default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="CSV to write")
    t = sub.add_parser("train", help="train the speaker embedding model")
    t.add_argument("--data", default=None, help="PDNC folder or examples CSV (setting `data`)")
    t.add_argument("--model-dir", default=None, help="output directory (setting `model_dir`)")
    t.add_argument("--config", default=None, help="YAML file of ClusterConfig settings")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sigma=0.5 (repeatable)")
    t.add_argument("--evaluate", default=None, metavar="SPLIT",
                   help="after training, evaluate on this split (e.g. test)")
    e = sub.add_parser("evaluate", help="cluster a split's books and print the scores")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--split", default="test", choices=("train", "validation", "test"))
    e.add_argument("--methods", default=None, help="e.g. hdbscan,bisecting_kmeans,affinity")


def run(args) -> int:
    from kt_pipeline import pdnc, speakers

    if args.action == "prepare":
        books = [b.strip() for b in args.books.split(",")] if args.books else None
        examples = pdnc.read_pdnc(args.pdnc, books, args.narrative_ratio, args.seed)
        pdnc.write_examples_csv(examples, args.output)
        n_narr = sum(e["is_narrative"] == "1" for e in examples)
        print(f"wrote {args.output}: {len(examples) - n_narr} quotes, {n_narr} narrative examples, "
              f"{len({e['book'] for e in examples})} books")
        return 0
    if args.action == "train":
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data={args.data}")
        if args.model_dir:
            overrides.append(f"model_dir={args.model_dir}")
        cfg = speakers.config_from_args(args.config, overrides)
        summary = speakers.train(cfg)
        best = summary["best"] or {}
        print(f"best validation {cfg.monitor} {best.get(cfg.monitor, float('nan')):.4f} at step "
              f"{summary['best_step']}; weights in {cfg.model_dir}")
        if args.evaluate:
            speakers.evaluate(cfg.model_dir, args.evaluate)
        return 0
    speakers.evaluate(args.model_dir, args.split, args.methods)
    return 0
