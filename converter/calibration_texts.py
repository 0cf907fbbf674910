"""The calibration texts: what the float model reads so the quantizers see real inputs of every layer.

Assembled from what every Python install has (standard-library source and docstrings, the start of
every topic of the reference manual in pydoc_data), plus sentences in eighteen languages, paragraphs
with a question and its answer in 26, code in other languages and degenerate repetitive input written
for this file; none of them is one of the reference texts. About 25,000 tokens, 15 % not English.
"""
from __future__ import annotations

import inspect

MULTILINGUAL = [
    "The river rose overnight after three days of rain, and by morning the old bridge was closed to traffic.",
    "Der Zug nach München hatte wegen einer Signalstörung fast eine Stunde Verspätung, also tranken wir Kaffee am Bahnsteig.",
    "La biblioteca municipal amplió su horario durante los exámenes y ahora abre también los domingos por la tarde.",
    "Le boulanger du quartier prépare chaque matin des croissants au beurre et une baguette à l'ancienne.",
    "Il museo ha restaurato un affresco del Quattrocento che era rimasto nascosto sotto uno strato di intonaco.",
    "A cooperativa agrícola começou a vender café diretamente aos consumidores pela internet.",
    "Вчера в горах выпал первый снег, и туристические тропы временно закрыли для посетителей.",
    "山田さんは毎朝六時に起きて、近くの公園を三十分ほど散歩してから仕事に出かけます。",
    "这家小餐馆的牛肉面很有名，每天中午门口都排着长队。",
    "서울의 지하철은 깨끗하고 빠르며, 대부분의 역에 영어 안내가 있습니다.",
    "تم افتتاح مكتبة جديدة في وسط المدينة تضم أكثر من مئة ألف كتاب باللغات المختلفة.",
    "मानसून की पहली बारिश के बाद किसानों ने धान की रोपाई शुरू कर दी है।",
    "Yeni açılan müze, şehrin Osmanlı dönemine ait fotoğraflarını ve belgelerini sergiliyor.",
    "De gemeente plant langs het kanaal honderd nieuwe bomen om de straten koeler te houden in de zomer.",
    "Hur lång tid tar det att cykla runt sjön om man stannar för att fika på vägen?",
    "Czy ktoś wie, gdzie można naprawić stary zegar z kukułką w okolicach Krakowa?",
    "Nhà hàng này phục vụ phở bò từ sáu giờ sáng, nhưng thường hết trước buổi trưa.",
    "Ο καιρός αύριο θα είναι ηλιόλουστος με θερμοκρασίες έως είκοσι οκτώ βαθμούς.",
    "what is the fastest way to convert a csv file with two million rows into parquet",
    "best hiking boots for wide feet under 150 dollars",
    "Quels sont les horaires d'ouverture de la piscine pendant les vacances scolaires ?",
    "¿Cuántos años tiene que tener un perro para empezar a correr con su dueño?",
]

MULTILINGUAL_PASSAGES = [  # paragraphs, questions and answers in 26 languages, written for this file
    "Die Stadtwerke haben angekündigt, dass im kommenden Winter drei neue Fernwärmeleitungen verlegt werden. "
    "Während der Bauarbeiten bleibt die Hauptstraße nur einspurig befahrbar. Anwohner können sich auf der Website "
    "über die genauen Termine informieren. Wie lange dauern die Arbeiten? Voraussichtlich bis Ende März.",
    "El ayuntamiento ha presentado un plan para reducir el tráfico en el centro histórico. A partir de septiembre, "
    "solo podrán entrar los vehículos de los residentes y del transporte público. ¿Qué pasará con los comercios? "
    "Los repartos se harán por la mañana, entre las siete y las once.",
    "Pour préparer une bonne soupe à l'oignon, il faut laisser les oignons caraméliser lentement pendant au moins "
    "quarante minutes. On ajoute ensuite le bouillon, un peu de vin blanc et on termine au four avec du pain grillé "
    "et du fromage râpé. Peut-on la congeler ? Oui, mais sans le pain ni le fromage.",
    "La squadra di ricerca dell'università ha scoperto una nuova specie di orchidea in una valle remota delle Alpi. "
    "La pianta fiorisce solo per due settimane all'anno e cresce tra le rocce calcaree. Dove si può vedere? "
    "Per ora soltanto nell'orto botanico, dove è stata trapiantata con cura.",
    "O festival de cinema da cidade recebeu este ano mais de trezentos filmes de quarenta países. As sessões ao ar "
    "livre na praça central foram as mais concorridas. Quando começa a venda de bilhetes para a próxima edição? "
    "Normalmente em maio, pela internet e na bilheteira do teatro.",
    "Библиотека университета перешла на новый режим работы: теперь читальный зал открыт круглосуточно во время "
    "сессии. Студенты могут бронировать места через мобильное приложение. Можно ли приносить еду? Только воду и "
    "чай в закрытых кружках.",
    "Міська рада вирішила відновити старий трамвайний маршрут, який не працював понад двадцять років. Нові вагони "
    "будуть тихими та доступними для людей з інвалідністю. Коли запустять рух? Орієнтовно наступної весни.",
    "駅前の古い商店街では、週末ごとに小さな市場が開かれています。地元の農家が朝採れの野菜や果物を売り、"
    "近くのパン屋も焼きたてのパンを並べます。何時から始まりますか？朝八時から昼の一時までです。",
    "我们公司下个月要搬到新的办公楼，新地址离地铁站只有五分钟的步行距离。搬家期间，客服电话会照常工作，"
    "但是网站可能会暂停几个小时。请问停车场收费吗？员工可以免费停车，访客需要提前登记。",
    "這間老茶行已經經營了一百多年，店裡仍然用傳統的方法烘焙烏龍茶。每到週末，很多遊客會來參觀並品嚐新茶。"
    "可以郵寄到國外嗎？可以，但需要大約兩週的時間。",
    "이번 주말에는 한강 공원에서 야외 음악회가 열립니다. 입장은 무료이며, 돗자리와 간단한 간식을 가져오면 "
    "좋습니다. 비가 오면 어떻게 되나요? 공연은 다음 주 토요일로 연기됩니다.",
    "أعلنت وزارة الصحة عن حملة تطعيم جديدة للأطفال في المدارس الابتدائية. وستستمر الحملة لمدة شهر كامل، "
    "ويمكن للأهالي الاطلاع على المواعيد عبر الموقع الرسمي. هل التطعيم إلزامي؟ لا، لكنه موصى به بشدة.",
    "שוק האיכרים בעיר פתוח בכל יום שישי בבוקר. אפשר למצוא בו ירקות טריים, גבינות מקומיות ולחם מחמצת. "
    "האם יש חניה בקרבת מקום? כן, יש חניון ציבורי במרחק שתי דקות הליכה.",
    "گروه کوهنوردی دانشگاه هر ماه یک برنامه صعود به قله‌های اطراف تهران دارد. شرکت در این برنامه‌ها برای "
    "همه دانشجویان آزاد است. آیا تجهیزات لازم است؟ کفش مناسب و لباس گرم کافی است.",
    "गाँव के सरकारी स्कूल में इस साल एक नया पुस्तकालय खोला गया है, जिसमें हिंदी और अंग्रेज़ी की दो हज़ार से "
    "ज़्यादा किताबें हैं। बच्चे शाम को भी वहाँ पढ़ सकते हैं। क्या बड़े लोग भी किताबें ले सकते हैं? हाँ, सदस्यता लेकर।",
    "শহরের পুরনো বাজারে প্রতি রবিবার হাতে বোনা কাপড় আর মাটির জিনিসের মেলা বসে। দূরের গ্রাম থেকে কারিগররা "
    "তাদের কাজ বিক্রি করতে আসেন। মেলা কখন শুরু হয়? সকাল নয়টা থেকে সন্ধ্যা পর্যন্ত চলে।",
    "పట్టణంలో కొత్తగా ప్రారంభించిన గ్రంథాలయంలో పిల్లల కోసం ప్రత్యేక విభాగం ఉంది. ప్రతి శనివారం కథల "
    "కార్యక్రమం జరుగుతుంది. ప్రవేశానికి రుసుము ఉందా? లేదు, అందరికీ ఉచితం.",
    "पुण्यातील जुन्या वाड्यात आता एक छोटे संग्रहालय सुरू झाले आहे. तिथे शहराच्या इतिहासाची छायाचित्रे आणि "
    "जुनी नाणी पाहायला मिळतात. संग्रहालय सोमवारी बंद असते का? हो, सोमवारी सुट्टी असते.",
    "Belediye, sahil boyunca yeni bir bisiklet yolu yapılacağını duyurdu. Yol on iki kilometre uzunluğunda olacak "
    "ve parkları birbirine bağlayacak. Ne zaman bitecek? Çalışmaların yaz başında tamamlanması bekleniyor.",
    "Het museum opent volgende maand een tentoonstelling over de geschiedenis van de Nederlandse scheepvaart. "
    "Bezoekers kunnen een oude handelsschip van binnen bekijken. Is er korting voor studenten? Ja, op vertoon "
    "van een geldige studentenkaart.",
    "Kommunen bygger en ny simhall som ska stå klar om två år. Den får en bassäng på femtio meter och en "
    "separat del för små barn. Blir det dyrare att bada? Priset för årskort ska enligt planen inte höjas.",
    "Nowa linia autobusowa połączy dworzec z lotniskiem w niecałe dwadzieścia minut. Autobusy będą kursować "
    "co kwadrans, także w nocy. Czy można płacić kartą? Tak, w każdym pojeździe jest terminal.",
    "Thư viện thành phố vừa mở thêm một phòng đọc dành cho học sinh, có máy lạnh và wifi miễn phí. Phòng mở "
    "cửa từ bảy giờ sáng đến mười giờ tối. Có cần đăng ký trước không? Không cần, chỉ cần mang thẻ học sinh.",
    "Pemerintah kota akan menanam seribu pohon di sepanjang jalan utama untuk mengurangi panas di musim "
    "kemarau. Warga juga diajak ikut merawat pohon di depan rumah mereka. Apakah bibitnya gratis? Ya, bisa "
    "diambil di kantor kelurahan.",
    "ตลาดน้ำแห่งนี้เปิดทุกวันเสาร์และอาทิตย์ตั้งแต่เช้าตรู่ ชาวบ้านพายเรือนำผลไม้และอาหารพื้นบ้านมาขาย "
    "นักท่องเที่ยวควรมาเวลาไหน? ควรมาก่อนแปดโมงเช้า เพราะอากาศยังไม่ร้อน",
    "Το δημοτικό θέατρο ανακοίνωσε το πρόγραμμα του χειμώνα, με έξι νέες παραστάσεις και δύο συναυλίες. "
    "Τα εισιτήρια πωλούνται ήδη στο ταμείο και στο διαδίκτυο. Υπάρχει έκπτωση για οικογένειες; Ναι, για "
    "τρία ή περισσότερα άτομα.",
]
MULTILINGUAL_PASSAGES += [
    "Wenn das Smartphone nach einem Update ständig neu startet, hilft oft ein Neustart im abgesicherten Modus. "
    "Dort lassen sich Apps, die Probleme verursachen, einzeln deinstallieren. Verliere ich dabei meine Fotos? "
    "Nein, persönliche Daten bleiben erhalten, solange man das Gerät nicht zurücksetzt.",
    "Los médicos recomiendan caminar al menos treinta minutos al día para mantener el corazón sano. No hace falta "
    "ir rápido: lo importante es la constancia. ¿Sirve también subir escaleras? Sí, es uno de los ejercicios más "
    "completos que se pueden hacer en casa.",
    "Les panneaux solaires installés sur le toit de l'école produisent assez d'électricité pour l'éclairage et les "
    "ordinateurs. Le surplus est revendu au réseau. Combien de temps faut-il pour rentabiliser l'installation ? "
    "Environ huit ans, selon les calculs de la mairie.",
    "Per imparare una lingua straniera conviene ascoltare ogni giorno un po' di radio o di podcast, anche senza "
    "capire tutto. Con il tempo l'orecchio si abitua ai suoni. Quante parole servono per una conversazione "
    "semplice? Bastano circa mille parole di uso comune.",
    "A vacina contra a gripe é atualizada todos os anos porque o vírus muda com frequência. Idosos, gestantes e "
    "crianças pequenas têm prioridade nos postos de saúde. A vacina pode causar febre? Em alguns casos, uma febre "
    "leve que passa em um ou dois dias.",
    "Чтобы сохранить батарею ноутбука, не стоит держать его постоянно подключённым к сети при полном заряде. "
    "Лучше, когда заряд находится между двадцатью и восемьюдесятью процентами. Вредно ли оставлять ноутбук на "
    "ночь на зарядке? Современные устройства сами ограничивают ток, но привычка всё равно сокращает срок службы.",
    "Щоб виростити помідори на балконі, потрібні великі горщики, сонячне місце та регулярний полив. Які сорти "
    "найкращі? Невисокі черрі, бо вони швидко дозрівають і не потребують багато простору.",
    "地震が起きたときは、まず机の下などに入って頭を守ることが大切です。揺れがおさまってから、火の元を確認し、"
    "落ち着いて避難してください。エレベーターは使ってもいいですか？いいえ、階段を使ってください。",
    "学习编程最好的方法是动手做项目，比如写一个记账的小程序或者一个简单的网站。遇到问题时先自己查资料，"
    "再去论坛提问。初学者应该先学哪种语言？很多人推荐从Python开始，因为语法比较简单。",
    "颱風來臨前，記得把陽台上的花盆搬進室內，並準備手電筒、飲用水和乾糧。如果住在低窪地區，要注意政府發布的"
    "撤離通知。停電的時候冰箱裡的食物能放多久？不開門的話，大約可以保存四個小時。",
    "김치를 맛있게 담그려면 배추를 소금물에 충분히 절이는 것이 중요합니다. 양념에는 고춧가루, 마늘, 생강, "
    "젓갈이 들어갑니다. 김치는 언제 먹는 것이 가장 맛있나요? 담근 지 일주일쯤 지나 적당히 익었을 때입니다.",
    "يساعد شرب كمية كافية من الماء على تحسين التركيز وتقليل الشعور بالتعب خلال اليوم. ينصح الخبراء بشرب ثمانية "
    "أكواب تقريباً، وأكثر في أيام الحر. هل يحسب الشاي والقهوة من هذه الكمية؟ نعم، ولكن الماء يبقى الخيار الأفضل.",
    "כדי לחסוך בחשמל בקיץ, מומלץ לכוון את המזגן לעשרים וחמש מעלות ולסגור תריסים בשעות החמות. האם כדאי לכבות "
    "את המזגן כשיוצאים מהבית לשעה? כן, הקירור מחדש לוקח רק כמה דקות.",
    "برای یادگیری آشپزی بهتر است از غذاهای ساده مثل املت و سوپ شروع کنید. کم‌کم می‌توانید دستورهای پیچیده‌تر "
    "را امتحان کنید. چه ادویه‌هایی در آشپزخانه لازم است؟ نمک، فلفل، زردچوبه و زیره پایه‌ی بیشتر غذاها هستند.",
    "अच्छी नींद के लिए रोज़ एक ही समय पर सोना और उठना ज़रूरी है। सोने से पहले मोबाइल फ़ोन का इस्तेमाल कम करें "
    "और हल्का भोजन करें। कितने घंटे की नींद काफ़ी है? ज़्यादातर वयस्कों के लिए सात से आठ घंटे।",
    "বর্ষাকালে মশাবাহিত রোগ থেকে বাঁচতে বাড়ির আশেপাশে জমে থাকা পানি সরিয়ে ফেলা দরকার। রাতে মশারি "
    "ব্যবহার করা উচিত। ডেঙ্গুর প্রধান লক্ষণ কী? হঠাৎ জ্বর, মাথাব্যথা আর শরীরে ব্যথা।",
    "వర్షాకాలంలో రైతులు వరి నాట్లు వేయడం ప్రారంభిస్తారు. సరైన సమయంలో ఎరువులు వేస్తే మంచి దిగుబడి వస్తుంది. "
    "ఎకరానికి ఎంత విత్తనం అవసరం? సాధారణంగా ఇరవై నుంచి ఇరవై ఐదు కిలోలు.",
    "पावसाळ्यात सह्याद्रीच्या डोंगरांमध्ये अनेक धबधबे वाहू लागतात. पर्यटकांनी निसरड्या खडकांवर काळजी घ्यावी. "
    "ट्रेकिंगसाठी कोणता महिना चांगला? जुलै आणि ऑगस्ट हे सर्वात सुंदर महिने मानले जातात.",
    "Bilgisayarınız yavaşladıysa önce başlangıçta açılan programları kontrol edin. Gereksiz olanları kapatmak çoğu "
    "zaman hızı belirgin şekilde artırır. Bellek eklemek işe yarar mı? Sekiz gigabayttan azsa evet, fark edilir.",
    "Wie een huisdier wil nemen, moet eerst nadenken over de tijd en de kosten. Een hond heeft elke dag "
    "beweging nodig, een kat is zelfstandiger. Wat kost een dierenarts gemiddeld per jaar? Voor een gezond dier "
    "ongeveer tweehonderd euro.",
    "För att odla potatis behöver man lucker jord och ett soligt läge. Sätt knölarna på våren när jorden har "
    "blivit varm. När kan man skörda? Färskpotatis brukar vara klar efter ungefär tio veckor.",
    "Aby chleb na zakwasie dobrze wyrósł, ciasto musi odpoczywać kilka godzin w ciepłym miejscu. Mąka żytnia "
    "daje ciemniejszy i bardziej kwaśny smak. Jak długo piec bochenek? Około czterdziestu minut w dwustu "
    "trzydziestu stopniach.",
    "Muốn giữ rau tươi lâu trong tủ lạnh, nên bọc rau trong giấy báo hoặc khăn giấy rồi cho vào túi. Không nên rửa "
    "rau trước khi cất. Rau có thể để được bao lâu? Thường khoảng năm đến bảy ngày.",
    "Untuk mengurangi sampah plastik, banyak toko kini tidak lagi memberikan kantong gratis. Pembeli diminta "
    "membawa tas belanja sendiri. Bagaimana dengan botol minum? Di beberapa kantor sudah tersedia tempat isi ulang "
    "air minum.",
    "การออกกำลังกายด้วยการว่ายน้ำช่วยให้กล้ามเนื้อแข็งแรงและไม่ทำร้ายข้อเข่า เหมาะสำหรับผู้สูงอายุ "
    "ควรว่ายน้ำสัปดาห์ละกี่ครั้ง? อย่างน้อยสามครั้ง ครั้งละครึ่งชั่วโมง",
    "Για να μάθει ένα παιδί ποδήλατο, είναι καλύτερο να ξεκινήσει χωρίς βοηθητικές ρόδες, σε ήπια κατηφόρα. "
    "Έτσι μαθαίνει πρώτα την ισορροπία. Σε ποια ηλικία ξεκινούν συνήθως; Γύρω στα τέσσερα ή πέντε χρόνια.",
]

SNIPPETS = [  # code that is not Python, written for this file
    "SELECT region, date_trunc('month', sold_at) AS month, SUM(amount) FROM sales\n"
    "WHERE sold_at >= now() - interval '1 year' GROUP BY 1, 2 ORDER BY 1, 2;",
    "#!/bin/sh\nfor host in $(cat hosts.txt); do\n  ssh \"$host\" 'df -h / | tail -1' || echo \"$host unreachable\"\ndone",
    "function groupBy(items, key) {\n  return items.reduce((acc, item) => {\n    (acc[item[key]] ||= []).push(item);\n"
    "    return acc;\n  }, {});\n}",
    "impl Iterator for Fib {\n    type Item = u64;\n    fn next(&mut self) -> Option<u64> {\n"
    "        let r = self.a;\n        self.a = self.b;\n        self.b += r;\n        Some(r)\n    }\n}",
    "2024-03-02T11:04:51Z INFO  worker-3 job=8812 status=ok duration_ms=412\n" * 12,  # repetitive, as logs are
]

# Degenerate input: one token or a short pattern repeated for hundreds of tokens drives the
# activations to extremes that ordinary prose never reaches, and 4-bit files fail there first.
REPETITIVE = [
    "rain " * 400,
    "ok " * 150,
    "x7 y8 " * 120,
    "na" * 300 + " batman",
    "Please hold, your call is important to us. " * 25,
    "-=" * 200,
    "🙂 " * 100,
]


def stdlib_texts() -> list[str]:
    """Standard-library code and docstrings: the same on every install of one Python version."""
    import collections
    import heapq
    import shlex
    import string
    import textwrap

    texts = []
    for mod, length in ((heapq, 2400), (shlex, 1600), (textwrap, 1600)):
        src = inspect.getsource(mod)
        start = src.find("\ndef ")
        texts.append(src[start + 1:start + 1 + length])
    for obj in (collections.OrderedDict, collections.Counter.most_common, string.Formatter, heapq.merge,
                textwrap.dedent, shlex.split):
        doc = inspect.getdoc(obj)
        if doc:
            texts.append(doc[:1200])
    if heapq.__doc__:
        texts.append(heapq.__doc__)  # a long document: the heap-queue essay, ~1,500 tokens
    return texts


def reference_manual(chars: int = 1000) -> list[str]:
    """The start of every topic of the Python reference manual that pydoc ships (pydoc_data.topics):
    English prose mixed with code, ~20,000 tokens. Enough rows for GPTQ's 1152 x 1152 moments."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out; the other texts still calibrate
        return []
    return [topics[name][:chars] for name in sorted(topics)]


def calibration_texts() -> list[str]:
    return MULTILINGUAL + MULTILINGUAL_PASSAGES + SNIPPETS + REPETITIVE + stdlib_texts() + reference_manual()
