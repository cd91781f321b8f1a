"""module-reload/second-copy-init-unwinds: what counts as the second copy's refused load.

Linux 6.12 passes module_init's -EEXIST (class_register() of a class that exists) back to
insmod; Linux 7.3's module loader keeps EEXIST for "already loaded" and returns -EBUSY
instead. The check accepts EBUSY only with the console showing class_register()'s duplicate,
judged here against a real recording (data/console/118-*).
"""

from pathlib import Path

from vblk_ci.scenarios.inject_module import second_copy_refusal_ok

RECORDED = (Path(__file__).parent / "data" / "console" / "118-real-sysfs-duplicate-class-7.3").read_text()
BUSY = "insmod: can't insert '/tmp/virtio_bl2.ko': Device or resource busy"
EXISTS = "insmod: can't insert '/tmp/virtio_bl2.ko': File exists"


def test_eexist_from_init_is_the_refusal_6_12_gives():
    assert second_copy_refusal_ok(EXISTS, "")


def test_ebusy_with_class_register_failing_on_the_console_is_the_refusal_7_3_gives():
    assert second_copy_refusal_ok(BUSY, RECORDED)


def test_ebusy_without_the_duplicate_class_is_not_enough():
    # e.g. no dynamic char major left: also EBUSY, but module_init never reached class_register()
    assert not second_copy_refusal_ok(BUSY, RECORDED.replace("vblk-generic with -EEXIST", "x with -ENOMEM"))
    assert not second_copy_refusal_ok(BUSY, "")


def test_other_errors_are_not_the_refusal():
    assert not second_copy_refusal_ok("insmod: can't insert '/tmp/virtio_bl2.ko': Cannot allocate memory", RECORDED)
    assert not second_copy_refusal_ok("insmod: can't insert '/tmp/virtio_bl2.ko': Invalid module format", RECORDED)
