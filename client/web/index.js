// The landing page: only translations.
import { initI18n } from './i18n.js';

initI18n({
  en: {
    'home.title': 'studycast · live study sessions',
    'home.intro':
      'One organiser broadcasts; venues and members watch live; attendance is recorded as it ' +
      'happens, and auditors review it.',
    'home.login': 'Organiser sign-in',
    'home.features': 'What it does',
    'home.broadcast.title': 'One broadcast, every venue',
    'home.broadcast.text':
      "Venue screens and members' phones receive the same live stream, without re-encoding per viewer.",
    'home.attendance.title': 'Attendance as it happens',
    'home.attendance.text':
      'Check-in at the venue by QR code, or remote viewing with short presence checks.',
    'home.audit.title': 'A record auditors can trust',
    'home.audit.text':
      'Every event goes to a hash-chained log; auditors review and export it read-only.',
  },
  'zh-CN': {
    'home.title': 'studycast · 在线学习直播',
    'home.intro': '组织者一人直播，各会场与成员同步收看；考勤实时记录，审计员随时核查。',
    'home.login': '组织者登录',
    'home.features': '功能',
    'home.broadcast.title': '一路直播，覆盖所有会场',
    'home.broadcast.text': '会场大屏与成员手机收到同一路直播，不为每位观众重新编码。',
    'home.attendance.title': '考勤实时记录',
    'home.attendance.text': '会场扫码签到；远程收看时通过简短的在场确认。',
    'home.audit.title': '经得起审计的记录',
    'home.audit.text': '每条记录写入哈希链日志；审计员只读查看与导出。',
  },
});
