import json

from click.testing import CliRunner
from legacy_format_writers import pa_tsv_line, random_images, write_npz_dir, write_pa_tsv

from butd.cli import main


def test_import_info_verify_export_from_the_command_line(tmp_path):
    images = random_images(5, dim=16, boxes=(36, 36))
    write_pa_tsv(tmp_path / "f.tsv", images)
    run = CliRunner().invoke
    r = run(main, ["shards", "import", "--format", "pa-tsv", str(tmp_path / "f.tsv"), str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "imported 5 records" in r.output
    r = run(main, ["shards", "info", str(tmp_path / "s")])
    assert r.exit_code == 0 and "records    5 in 1 shard(s)" in r.output and "region" in r.output
    r = run(main, ["shards", "info", "--json", str(tmp_path / "s")])
    assert json.loads(r.output)["num_records"] == 5
    r = run(main, ["shards", "verify", str(tmp_path / "s")])
    assert r.exit_code == 0 and r.output.startswith("OK "), r.output
    r = run(main, ["shards", "export", "--format", "hh-h5", str(tmp_path / "s"), str(tmp_path / "o.h5")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o.h5").exists() and (tmp_path / "o.ids.json").exists()
    assert (tmp_path / "o_imgid2idx.pkl").exists()  # the index bottom-up-attention-vqa's dataset opens


def test_verify_exits_nonzero_on_a_flipped_byte(tmp_path):
    write_pa_tsv(tmp_path / "f.tsv", random_images(3, dim=16))
    run = CliRunner().invoke
    run(main, ["shards", "import", "--format", "pa-tsv", str(tmp_path / "f.tsv"), str(tmp_path / "s")])
    shard = tmp_path / "s" / "shard-00000.lmdb"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = run(main, ["shards", "verify", str(tmp_path / "s")])
    assert r.exit_code == 1 and "shard-00000.lmdb: sha256" in r.output


def test_bad_row_is_one_line_error_and_skip_bad_continues(tmp_path):
    images = random_images(3, dim=16)
    lines = [pa_tsv_line(i, img) for i, img in images.items()]
    (tmp_path / "f.tsv").write_text(lines[0] + "x\t1\t2\n" + lines[1] + lines[2])
    run = CliRunner().invoke
    args = ["shards", "import", "--format", "pa-tsv", str(tmp_path / "f.tsv"), str(tmp_path / "s")]
    r = run(main, args)
    assert r.exit_code == 1
    expected = f"Error: {tmp_path / 'f.tsv'}:2: expected 6 tab-separated fields, got 3 (truncated line?)"
    assert r.output.strip() == expected
    assert not (tmp_path / "s").exists()
    r = run(main, args[:4] + ["--skip-bad"] + args[4:])
    assert r.exit_code == 0 and "1 bad row(s) skipped" in r.output
    assert (tmp_path / "s" / "failures.jsonl").exists()


def test_npz_import_says_which_fields_were_skipped(tmp_path):
    write_npz_dir(tmp_path / "npz", random_images(2, dim=8, with_labels=True))
    args = ["shards", "import", "--format", "npz-dir", str(tmp_path / "npz"), str(tmp_path / "s")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "skipped field 'info' (pickled: pass --allow-pickle" in r.output


def test_info_on_an_incomplete_store_says_so(tmp_path):
    (tmp_path / "s").mkdir()
    r = CliRunner().invoke(main, ["shards", "info", str(tmp_path / "s")])
    assert r.exit_code == 1 and "incomplete" in r.output
