<?php
// Drives a running vmbackup with the public OnApp PHP wrapper (OnApp/OnApp-PHP-Wrapper-External), the way a
// provider's control panel does. Usage: php onapp_client.php WRAPPER_DIR BASE_URL LOGIN PASSWORD VM_ID DISK_ID
// Prints one "ok <step>" line per step and exits non-zero at the first failure.
error_reporting(E_ALL & ~E_DEPRECATED & ~E_NOTICE & ~E_WARNING);
[$_, $dir, $url, $login, $password, $vmId, $diskId] = $argv;
require_once $dir . '/OnAppInit.php';

function check($cond, $step, $detail = '') {
    if (!$cond) { fwrite(STDERR, "FAILED $step $detail\n"); exit(1); }
    echo "ok $step\n";
}

function wait_built($factory, $id) {
    for ($i = 0; $i < 200; $i++) {
        $b = $factory->factory('VirtualMachine_Backup')->load($id);  // load() returns the loaded object
        if ($b && $b->_built && !$b->_locked) return $b;
        usleep(100000);
    }
    return null;
}

$onapp = new OnApp_Factory($url, $login, $password);
check($onapp->getErrorsAsArray() == null, 'connect (GET /version.json)', print_r($onapp->getErrorsAsArray(), true));

$disk = $onapp->factory('Disk');
$disk->takeBackup($diskId);
check(!$disk->getErrorsAsArray() && $disk->_obj && $disk->_obj->_id, 'Disk::takeBackup', print_r($disk->getErrorsAsArray(), true));
$first = wait_built($onapp, $disk->_obj->_id);
check($first !== null && $first->_backup_type == 'normal', 'normal backup built');

$b = $onapp->factory('VirtualMachine_Backup');
$b->_disk_id = $diskId;
$b->_note = 'taken by the PHP wrapper';
$b->save();
check(!$b->getErrorsAsArray() && $b->_id, 'VirtualMachine_Backup::save (POST + reload)', print_r($b->getErrorsAsArray(), true));
$second = wait_built($onapp, $b->_id);
check($second !== null && $second->_note == 'taken by the PHP wrapper', 'note kept');

$list = $onapp->factory('VirtualMachine_Backup');
$all = $list->getList($vmId);
check(is_array($all) && count($all) >= 2, 'getList', print_r($list->getErrorsAsArray(), true));
$images = $list->getImagesList($vmId);
check(is_array($images) && count($images) >= 2 && $images[0]->_backup_type == 'normal', 'getImagesList');
$files = $list->getFilesList($vmId);
check(is_array($files), 'getFilesList');
$disks = $list->diskBackups($diskId);
check(is_array($disks) && count($disks) >= 2, 'diskBackups (exact content type)', print_r($list->getErrorsAsArray(), true));

$r = $onapp->factory('VirtualMachine_Backup');
$r->_id = $first->_id;
$r->restore();
check(!$r->getErrorsAsArray(), 'restore', print_r($r->getErrorsAsArray(), true));
check(wait_built($onapp, $first->_id) !== null, 'restore finished');

$c = $onapp->factory('VirtualMachine_Backup');
$c->_id = $first->_id;
$c->convert('from-php');
check(!$c->getErrorsAsArray() && $c->_obj && $c->_obj->_label == 'from-php', 'convert', print_r($c->getErrorsAsArray(), true));
check(wait_built($onapp, $first->_id) !== null, 'convert finished');
$t = $onapp->factory('Template')->load($c->_obj->_id);
check($t && $t->_label == 'from-php' && $t->_state == 'active', 'template load');

$d = $onapp->factory('VirtualMachine_Backup');
$d->_id = $second->_id;
$d->delete();
check($d->isDelete(), 'delete (with the stale body of the previous request)', print_r($d->getErrorsAsArray(), true));

$tx = $onapp->factory('Transaction');
$txs = $tx->getList();
check(is_array($txs) && count($txs) > 0, 'transactions getList');

$bad = $onapp->factory('VirtualMachine_Backup');
$bad->load(999999);
check($bad->getErrorsAsArray() != null, 'missing backup is an error (404 with errors)');

$wrong = new OnApp_Factory($url, $login, 'wrong-password');
check(!$wrong->_is_auth, 'bad password refused at connect');
echo "all ok\n";
